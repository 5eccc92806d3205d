"""models/fast_layers.py: each speed trick against the stock Keras or TensorFlow piece it
replaces (outputs and gradients)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import fast_layers
from vae_pipeline.models import vae as vae_lib


@pytest.mark.parametrize("filters, strides", [(1, 1), (3, 1), (4, 2), (4, 1)])
def test_fast_transposed_conv_is_the_stock_one(filters, strides):
  """Same weights, same outputs and gradients as keras' Conv2DTranspose (computed depthwise for
  one channel; in float32 the bias gradient is TensorFlow's own, see the next test)."""
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.normal(size=(3, 12, 8, 5)).astype(np.float32))
  layers = [cls(filters, 3, strides=strides, padding="same", activation="sigmoid")
            for cls in (keras.layers.Conv2DTranspose, fast_layers.FastConv2DTranspose)]
  for layer in layers:
    layer(inputs)
  weights = [rng.normal(size=w.shape).astype(np.float32) for w in layers[0].get_weights()]
  results = []
  for layer in layers:
    layer.set_weights(weights)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = layer(inputs)
      loss = tf.reduce_sum(vae_lib.reconstruction_loss(tf.ones_like(outputs) * 0.3, outputs))
    results.append([outputs, *tape.gradient(loss, [inputs] + layer.trainable_weights)])
  for expected, got in zip(*results):
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
  assert results[0][0].shape == (3, 12 * strides, 8 * strides, filters)


@pytest.mark.parametrize("filters", [1, 3, 4])
def test_a_frozen_stride_1_transposed_conv_serves_the_same_function(filters):
  """freeze_for_serving (done at export) stores the equivalent forward conv's kernel once:
  inference then gives the stock layer's outputs at any batch size, the Keras weights (and so
  checkpoints) are unchanged, and training still reads the kernel itself."""
  rng = np.random.default_rng(1)
  layers = [cls(filters, 3, padding="same", activation="relu")
            for cls in (keras.layers.Conv2DTranspose, fast_layers.FastConv2DTranspose)]
  for layer in layers:
    layer(tf.zeros((1, 7, 7, 5)))
  weights = [rng.normal(size=w.shape).astype(np.float32) for w in layers[0].get_weights()]
  for layer in layers:
    layer.set_weights(weights)
  stock, fast = layers
  forward_kernel = fast.freeze_for_serving()
  assert forward_kernel.shape == (3, 3, 5, filters)
  assert len(fast.weights) == 2 and all(w is not forward_kernel for w in fast.weights)
  for batch in (1, 6):
    inputs = tf.constant(rng.normal(size=(batch, 7, 7, 5)).astype(np.float32))
    np.testing.assert_allclose(fast(inputs, training=False).numpy(), stock(inputs).numpy(),
                               rtol=1e-5, atol=1e-5)
  with tf.GradientTape() as tape:
    outputs = fast(inputs, training=True)
  assert tape.gradient(outputs, fast.kernel) is not None
  strided = fast_layers.FastConv2DTranspose(4, 3, strides=2, padding="same")
  strided(tf.zeros((1, 7, 7, 5)))
  assert strided.freeze_for_serving() is None  # no forward-conv form: stays a transposed conv


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_bias_add_is_the_stock_one(dtype):
  """Outputs and the gradient of the input: tf.nn.bias_add's; the bias gradient in float32 too
  (in bfloat16, see the next test)."""
  rng = np.random.default_rng(2)
  inputs = tf.cast(rng.normal(size=(4, 6, 5, 3)).astype(np.float32), dtype)
  bias = tf.cast(rng.normal(size=(3,)).astype(np.float32), dtype)
  upstream = tf.cast(rng.normal(size=(4, 6, 5, 3)).astype(np.float32), dtype)
  results = []
  for add in (tf.nn.bias_add, fast_layers.bias_add):
    with tf.GradientTape() as tape:
      tape.watch([inputs, bias])
      outputs = add(inputs, bias)
    grads = tape.gradient(outputs, [inputs, bias], output_gradients=upstream)
    results.append([tf.cast(t, tf.float32).numpy() for t in [outputs] + grads])
  (outputs, input_grad, bias_grad), (fast_outputs, fast_input_grad, fast_bias_grad) = results
  np.testing.assert_array_equal(fast_outputs, outputs)
  np.testing.assert_array_equal(fast_input_grad, input_grad)
  if dtype == tf.float32:
    np.testing.assert_allclose(fast_bias_grad, bias_grad, rtol=1e-6)


def test_bias_gradient_in_bfloat16_accumulates_in_float32():
  """TensorFlow's own BiasAddGrad sums bfloat16 in bfloat16 (far off for big batches)."""
  upstream = tf.random.stateless_normal([64, 28, 28, 16], seed=[0, 1], mean=1.0)
  exact = tf.reduce_sum(upstream, axis=[0, 1, 2])
  low = tf.cast(upstream, tf.bfloat16)
  bias = tf.zeros([16], tf.bfloat16)
  with tf.GradientTape() as tape:
    tape.watch(bias)
    outputs = fast_layers.bias_add(low, bias)
  ours = tf.cast(tape.gradient(outputs, bias, output_gradients=low), tf.float32)
  stock = tf.cast(tf.raw_ops.BiasAddGrad(out_backprop=low), tf.float32)
  relative = lambda got: float(tf.reduce_max(tf.abs(got - exact) / tf.abs(exact)))
  assert relative(ours) < 0.01  # bfloat16 rounding of the inputs and the result only
  assert relative(stock) > 10 * relative(ours), (relative(stock), relative(ours))


def test_several_steps_per_call_train_as_one_step_per_call(digits):
  # 7 batches per epoch: calls of 4 steps, then Keras shortens the last call to the epoch's end.
  images = digits[0][:200].astype(np.float32) / 255.0
  runs = []
  for steps_per_call in (1, 4):
    keras.utils.set_random_seed(0)
    model = vae_lib.build_vae((28, 28, 1), latent_dim=4, hidden_units=32)
    optimizer = keras.optimizers.legacy.Adam(1e-3)
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_call)
    optimizer._create_all_weights(model.trainable_variables)  # as the Trainer: one trace
    traced = []
    step = model.train_step
    model.train_step = lambda batch, step=step: traced.append(1) or step(batch)
    history = model.fit(images, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert int(model._train_counter.numpy()) == 14  # pylint: disable=protected-access
    runs.append((history.history["loss"], model.get_weights(), len(traced)))
  (one_loss, one_weights, _), (loss, weights, traced) = runs
  assert traced == 1  # traced once (Keras' own loop, converted by AutoGraph, traces it twice)
  assert loss == one_loss  # the same steps: bit-identical on this CPU
  for a, b in zip(one_weights, weights):
    np.testing.assert_array_equal(a, b)
