"""CPU speed tricks behind the VAE (models/vae.py), each computing what the stock piece computes.

- `bias_add`: tf.nn.bias_add, with a bias gradient that accumulates bfloat16 in float32.
- `FastConv2DTranspose`: Keras' Conv2DTranspose with the same weights and function, faster.
- `OneTraceStepsLoop`: Keras' training loop for several steps per call, traced once.

tests/test_fast_layers.py holds each against the stock one (outputs and gradients).
"""
import types

import tensorflow as tf
import tf_keras as keras


@tf.custom_gradient
def _bias_add_summing_in_float32(outputs, bias):
  def gradient(upstream):
    return upstream, tf.reduce_sum(upstream, axis=list(range(upstream.shape.rank - 1)))
  return tf.nn.bias_add(outputs, bias), gradient


def bias_add(outputs, bias):
  """tf.nn.bias_add; in bfloat16, with the bias gradient a tf.reduce_sum (float32 accumulation).

  TensorFlow's BiasAddGrad accumulates bfloat16 in bfloat16 on CPU: for a 128x28x28x16 batch it
  comes out ~27% off the float32 sum, and is slower than this. In float32 (the served model) it
  is the stock op.
  """
  if outputs.dtype == tf.bfloat16:
    return _bias_add_summing_in_float32(outputs, bias)
  return tf.nn.bias_add(outputs, bias)


class FastConv2DTranspose(keras.layers.Conv2DTranspose):
  """Keras' Conv2DTranspose, same weights and same function, computed faster on CPU.

  - A stride-1 transposed conv is the forward conv with the kernel flipped in space and its
    in/out channels swapped. `freeze_for_serving` stores that kernel once, at export, and
    inference then runs the forward conv, which TensorFlow fuses with the bias and ReLU (a
    transposed conv is not fused, and flipping the kernel per call costs more than it saves).
    Training keeps the transposed conv (with every transposed conv as convs, it trains slower).
  - To one channel, the forward conv runs as a depthwise conv and a sum over input channels, in
    training too. oneDNN's transposed conv to a single channel is slow (about 3x slower forward
    than this way, 1.5x forward + backward). To three channels the depthwise form is slower, so
    training uses the stock kernel there.
  - The bias is added by `bias_add` above (a correct and faster gradient in bfloat16).

  What this project does not use ("valid" padding, dilation, output padding, channels first)
  is the stock layer.
  """

  def build(self, input_shape):
    super().build(input_shape)
    # Not a Keras weight (it is derived from the kernel, and checkpoints stay the same): a
    # variable set only by freeze_for_serving, at export, which the SavedModel holds as a constant.
    self._serving = types.SimpleNamespace(forward_kernel=None)

  def _forward_kernel(self):
    """[h, w, out, in] -> [h, w, in, out], flipped in space: the equivalent forward conv's."""
    return tf.reverse(tf.transpose(self.kernel, [0, 1, 3, 2]), [0, 1])

  def freeze_for_serving(self):
    """Stores the forward kernel for inference calls; returns its variable (None if this layer
    has no forward form). The layer must not be trained afterwards: the copy would go stale."""
    if self.strides != (1, 1) or not self.built:
      return None
    self._serving.forward_kernel = tf.Variable(self._forward_kernel(), trainable=False,
                                               name=f"{self.name}_forward_kernel")
    return self._serving.forward_kernel

  def call(self, inputs, training=None):
    height, width = inputs.shape[1:3]
    if (self.padding != "same" or self.data_format != "channels_last" or None in (height, width)
        or self.dilation_rate != (1, 1) or self.output_padding is not None):
      return super().call(inputs)
    forward_kernel = None  # None: the transposed conv itself
    if self.strides == (1, 1):
      if self._serving.forward_kernel is not None and not training:
        forward_kernel = tf.cast(self._serving.forward_kernel, inputs.dtype)
      elif self.filters == 1:
        forward_kernel = self._forward_kernel()
    if forward_kernel is None:
      shape = [height * self.strides[0], width * self.strides[1], self.filters]
      output_shape = tf.stack([tf.shape(inputs)[0], *shape])
      outputs = tf.nn.conv2d_transpose(inputs, self.kernel, output_shape, self.strides, "SAME")
      outputs.set_shape([inputs.shape[0], *shape])
    elif self.filters == 1:  # [h, w, in, 1] is also the depthwise kernel's layout
      per_channel = tf.nn.depthwise_conv2d(inputs, forward_kernel, [1, 1, 1, 1], "SAME")
      outputs = tf.reduce_sum(per_channel, axis=-1, keepdims=True)
    else:
      outputs = tf.nn.conv2d(inputs, forward_kernel, 1, "SAME")
    if self.use_bias:  # a tensor, not the variable: tf.custom_gradient then sees no variables
      outputs = bias_add(outputs, tf.convert_to_tensor(self.bias))
    return self.activation(outputs) if self.activation is not None else outputs


class OneTraceStepsLoop:
  """A keras.Model mixin: several training steps per call (compile's steps_per_execution) run as
  one tf.while_loop traced without AutoGraph; otherwise Keras' own train function.

  Keras writes that loop as a Python `for` that AutoGraph converts, and AutoGraph traces the
  body twice (once to learn what the loop returns): a second trace, which this saves. The model's
  train_step must return one scalar per metric, named as `self.metrics`. Under a distribution
  strategy with several replicas, Keras' own loop (it runs the step per replica).
  """

  def make_train_function(self, force=False):
    steps = self._steps_per_execution
    if ((self.train_function is not None and not force) or steps is None
        or int(steps.numpy()) == 1 or self.distribute_strategy.num_replicas_in_sync > 1):
      return super().make_train_function(force)

    def one_step(iterator):
      outputs = self.train_step(next(iterator))
      with tf.control_dependencies(list(outputs.values())):
        self._train_counter.assign_add(1)
      return outputs

    def train_function(iterator):
      initial = {metric.name: tf.zeros([]) for metric in self.metrics}  # one step's outputs
      _, outputs = tf.while_loop(lambda step, _: step < steps,
                                 lambda step, _: (step + 1, one_step(iterator)),
                                 (tf.constant(0, steps.dtype), initial))
      return outputs

    self.train_function = tf.function(train_function, autograph=False, reduce_retracing=True)
    return self.train_function
