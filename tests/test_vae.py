"""The model's pieces against hand-computed values."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import vae as vae_lib


def test_sampling_draws_from_the_posterior():
  keras.utils.set_random_seed(0)
  mean = np.array([[1.5, -2.0, 0.0]], np.float32).repeat(20000, axis=0)
  log_var = np.log(np.array([[0.25, 4.0, 1.0]], np.float32)).repeat(20000, axis=0)
  z = vae_lib.Sampling()([tf.constant(mean), tf.constant(log_var)]).numpy()
  assert z.shape == (20000, 3)
  np.testing.assert_allclose(z.mean(axis=0), [1.5, -2.0, 0.0], atol=0.05)
  np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0, 1.0], rtol=0.03)
  # Independent dimensions: epsilon has shape (batch, dim), not one draw shared by all dims.
  assert abs(np.corrcoef(z[:, 0], z[:, 2])[0, 1]) < 0.03


def test_kl_loss_matches_hand_computation():
  mean = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
  log_var = np.array([[0.0, 0.0], [np.log(0.5), np.log(3.0)]], np.float32)
  expected = [0.0,
              -0.5 * ((1 + np.log(0.5) - 1.0 - 0.5) + (1 + np.log(3.0) - 4.0 - 3.0))]
  np.testing.assert_allclose(vae_lib.kl_loss(mean, log_var).numpy(), expected, rtol=1e-6)


def test_reconstruction_loss_is_bce_summed_over_pixels():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 4, 4, 2)).astype(np.float32)
  reconstruction = rng.uniform(0.01, 0.99, size=(3, 4, 4, 2)).astype(np.float32)
  bce = -(images * np.log(reconstruction) + (1 - images) * np.log(1 - reconstruction))
  expected = bce.sum(axis=(1, 2, 3))
  got = vae_lib.reconstruction_loss(images, reconstruction).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # mean BCE x H x W x C, the definition used in the course lab
  mean_bce = keras.losses.binary_crossentropy(images, reconstruction).numpy().mean(axis=(1, 2))
  np.testing.assert_allclose(got, mean_bce * 4 * 4 * 2, rtol=1e-4)


def test_perfect_reconstruction_of_binary_images_costs_almost_nothing():
  images = np.array([[[[0.0], [1.0]], [[1.0], [0.0]]]], np.float32)
  assert vae_lib.reconstruction_loss(images, images).numpy()[0] < 1e-5


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 48, 3)])
def test_decoder_shapes_follow_the_configured_image_shape(shape):
  model = vae_lib.build_vae(shape, latent_dim=5, hidden_units=32)
  mean, log_var = model.encoder(tf.zeros((2,) + shape))
  assert mean.shape == (2, 5) and log_var.shape == (2, 5)
  images = model.decoder(tf.zeros((2, 5))).numpy()
  assert images.shape == (2,) + shape
  assert images.min() >= 0.0 and images.max() <= 1.0  # sigmoid output
  assert any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in model.decoder.layers)


@pytest.mark.parametrize("filters, strides", [(1, 1), (3, 1), (4, 2), (4, 1)])
def test_fast_transposed_conv_is_the_stock_one(filters, strides):
  """Same weights, same outputs and gradients as keras' Conv2DTranspose (computed depthwise for
  one channel; in float32 the bias gradient is TensorFlow's own, see the next test)."""
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.normal(size=(3, 12, 8, 5)).astype(np.float32))
  layers = [cls(filters, 3, strides=strides, padding="same", activation="sigmoid")
            for cls in (keras.layers.Conv2DTranspose, vae_lib.FastConv2DTranspose)]
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
            for cls in (keras.layers.Conv2DTranspose, vae_lib.FastConv2DTranspose)]
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
  strided = vae_lib.FastConv2DTranspose(4, 3, strides=2, padding="same")
  strided(tf.zeros((1, 7, 7, 5)))
  assert strided.freeze_for_serving() is None  # no forward-conv form: stays a transposed conv


def test_bias_gradient_in_bfloat16_accumulates_in_float32():
  """TensorFlow's own BiasAddGrad sums bfloat16 in bfloat16 (far off for big batches)."""
  upstream = tf.random.stateless_normal([64, 28, 28, 16], seed=[0, 1], mean=1.0)
  exact = tf.reduce_sum(upstream, axis=[0, 1, 2])
  low = tf.cast(upstream, tf.bfloat16)
  bias = tf.zeros([16], tf.bfloat16)
  with tf.GradientTape() as tape:
    tape.watch(bias)
    outputs = vae_lib.bias_add(low, bias)
  ours = tf.cast(tape.gradient(outputs, bias, output_gradients=low), tf.float32)
  stock = tf.cast(tf.raw_ops.BiasAddGrad(out_backprop=low), tf.float32)
  relative = lambda got: float(tf.reduce_max(tf.abs(got - exact) / tf.abs(exact)))
  assert relative(ours) < 0.01  # bfloat16 rounding of the inputs and the result only
  assert relative(stock) > 10 * relative(ours), (relative(stock), relative(ours))


@pytest.mark.parametrize("shape, message", [((30, 28, 1), "multiples of 4"),
                                            ((28, 28, 2), "1 or 3 channels")])
def test_unsupported_image_shapes_are_refused_clearly(shape, message):
  with pytest.raises(ValueError, match=message):
    vae_lib.build_vae(shape, latent_dim=2, hidden_units=32)


def test_a_few_training_steps_reduce_the_loss(digits):
  keras.utils.set_random_seed(1)
  images = digits[0][:512].astype(np.float32) / 255.0
  model = vae_lib.build_vae((28, 28, 1), latent_dim=2, hidden_units=32)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  history = model.fit(images, batch_size=64, epochs=3, verbose=0, shuffle=False)
  losses = history.history["loss"]
  assert losses[-1] < losses[0] - 20, losses
  assert np.isclose(history.history["reconstruction_loss"][-1] + history.history["kl_loss"][-1],
                    losses[-1], rtol=1e-4)


def test_mixed_precision_trains_and_serves_an_equal_float32_copy(digits):
  keras.utils.set_random_seed(2)
  images = digits[0][:256].astype(np.float32) / 255.0
  model = vae_lib.build_vae((28, 28, 1), latent_dim=4, hidden_units=32, policy="mixed_bfloat16")
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  history = model.fit(images, batch_size=64, epochs=2, verbose=0)
  assert np.all(np.isfinite(history.history["loss"]))
  conv = next(l for l in model.encoder.layers if isinstance(l, keras.layers.Conv2D))
  assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
  copy = vae_lib.copy_weights(model, vae_lib.build_vae((28, 28, 1), latent_dim=4,
                                                       hidden_units=32))
  assert all(layer.compute_dtype == "float32" for layer in copy.encoder.layers[1:])
  mean, _ = model.encoder(images[:32])
  copy_mean, _ = copy.encoder(images[:32])
  assert mean.dtype == copy_mean.dtype == tf.float32
  # Same weights; only bfloat16 rounding (8 bits of mantissa) separates the two.
  np.testing.assert_allclose(copy_mean, mean, atol=0.1 * float(np.abs(mean).max()))


def test_a_non_finite_loss_stops_training_with_a_clear_error():
  from vae_pipeline.models import trainer  # pylint: disable=import-outside-toplevel
  model = vae_lib.build_vae((28, 28, 1), latent_dim=2, hidden_units=8)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  images = np.full((64, 28, 28, 1), np.nan, np.float32)
  with pytest.raises(RuntimeError, match="training diverged: the loss became nan at batch 0"):
    model.fit(images, batch_size=32, epochs=1, verbose=0,
              callbacks=[trainer.StopOnNonFiniteLoss()])


def test_log_variance_is_capped_so_losses_stay_finite():
  model = vae_lib.build_vae((28, 28, 1), latent_dim=3, hidden_units=8)
  head = next(l for l in model.encoder.layers if isinstance(l, vae_lib.SoftCap))
  raw = tf.constant([[-50.0, 0.0, 1e4]])
  capped = head(raw).numpy()
  assert capped[0, 2] <= vae_lib.MAX_LOG_VAR and abs(capped[0, 0] + 50.0) < 1e-6
  kl = vae_lib.kl_loss(tf.zeros((1, 3)), head(raw))
  assert np.isfinite(kl.numpy()).all()


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
