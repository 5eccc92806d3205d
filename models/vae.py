"""The convolutional VAE, after the course lab: Sampling, encoder, decoder, losses, model.

Everything is `tf_keras` (Keras 2): the Transform graph is a tf_keras model and both must live
in one SavedModel.
"""
import types

import tensorflow as tf
import tf_keras as keras

# The encoder halves height and width twice; the decoder doubles them back.
DOWNSAMPLING = 4
# Channels of the smallest (H/4 x W/4) feature maps: the encoder's last and the decoder's first.
# 48 instead of 64: 23% fewer multiply-adds per image (5.7 M) at the same quality, given 48
# epochs instead of 40 (benchmarks/quality.py).
SMALLEST_MAP_CHANNELS = 48
# A posterior variance above the prior's is never worth its KL cost, but an unusual input can
# drive the raw log-variance up until exp() overflows and the losses become inf (seen on
# digits a 2-epoch model had not learned): log_var is capped, smoothly, at this value.
MAX_LOG_VAR = 2.0


class Sampling(keras.layers.Layer):
  """Draws z = mean + exp(0.5 * log_var) * epsilon with epsilon ~ N(0, I)."""

  def call(self, inputs):
    mean, log_var = inputs
    batch, dim = tf.shape(mean)[0], tf.shape(mean)[1]
    epsilon = tf.random.normal(shape=(batch, dim))
    return mean + tf.exp(0.5 * log_var) * epsilon


class SoftCap(keras.layers.Layer):
  """min(x, limit), smoothly: x - softplus(x - limit)."""

  def __init__(self, limit, **kwargs):
    super().__init__(**kwargs)
    self.limit = limit

  def call(self, x):
    return x - tf.nn.softplus(x - self.limit)


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


def check_image_shape(image_shape):
  height, width, channels = image_shape
  if height % DOWNSAMPLING or width % DOWNSAMPLING:
    raise ValueError(f"image height and width must be multiples of {DOWNSAMPLING} for this "
                     f"architecture, got {height}x{width}")
  if channels not in (1, 3):
    raise ValueError(f"images must have 1 or 3 channels, got {channels}")


def conv_bn_relu(x, filters, strides, policy):
  """Conv2D - BatchNorm - ReLU. With BatchNorm before the ReLU, TensorFlow's graph optimizer
  folds it into the convolution at inference: the served model runs one op per block, with the
  same quality as BatchNorm after the ReLU."""
  x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                          dtype=policy)(x)  # no bias: BatchNorm's offset is one
  x = keras.layers.BatchNormalization(dtype=policy)(x)
  return keras.layers.ReLU(dtype=policy)(x)


def build_encoder(image_shape, latent_dim, hidden_units, policy=None):
  """Image -> (mean, log_var) of the approximate posterior q(z | x).

  `policy` ("mixed_bfloat16") computes the body in bfloat16; the two heads stay float32.
  """
  images = keras.Input(shape=image_shape, name="images")
  x = conv_bn_relu(images, 32, strides=2, policy=policy)
  x = conv_bn_relu(x, 64, strides=2, policy=policy)
  # A stride-1 conv adds capacity at the smallest scale, where a layer is cheapest. One at 14x14
  # as well costs 1.8 M multiply-adds per image for less than a nat at equal epochs, which the
  # epochs its time buys win back (benchmarks/quality.py).
  x = conv_bn_relu(x, SMALLEST_MAP_CHANNELS, strides=1, policy=policy)
  x = keras.layers.Flatten(dtype=policy)(x)
  x = keras.layers.Dense(hidden_units, use_bias=False, dtype=policy)(x)
  x = keras.layers.BatchNormalization(dtype=policy)(x)
  x = keras.layers.ReLU(dtype=policy)(x)
  mean = keras.layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
  log_var = keras.layers.Dense(latent_dim, dtype="float32")(x)
  log_var = SoftCap(MAX_LOG_VAR, name="z_log_var", dtype="float32")(log_var)
  return keras.Model(images, [mean, log_var], name="encoder")


def build_decoder(image_shape, latent_dim, policy=None, conv_transpose=FastConv2DTranspose):
  """z -> image in [0, 1]; the first feature map is the encoder's last one.

  No BatchNorm here: as good without it (benchmarks/quality.py), and faster. `conv_transpose`:
  the class of every transposed conv (keras.layers.Conv2DTranspose gives the same model on stock kernels).
  """
  check_image_shape(image_shape)
  height, width, channels = image_shape
  start_shape = (height // DOWNSAMPLING, width // DOWNSAMPLING, SMALLEST_MAP_CHANNELS)
  z = keras.Input(shape=(latent_dim,), name="z")
  x = keras.layers.Dense(start_shape[0] * start_shape[1] * start_shape[2], activation="relu",
                         dtype=policy)(z)
  x = keras.layers.Reshape(start_shape, dtype=policy)(x)
  # A residual refinement at the smallest scale, where an extra layer is cheapest.
  refined = conv_transpose(SMALLEST_MAP_CHANNELS, 3, padding="same", activation="relu",
                           dtype=policy)(x)
  x = keras.layers.Add(dtype=policy)([x, refined])
  # Few channels on the way up: 64 then 32 (an earlier default) cost 3.7 M more multiply-adds
  # per image (this whole model is 5.7 M) and, in the same training time, bought no quality.
  x = conv_transpose(32, 3, strides=2, padding="same", activation="relu", dtype=policy)(x)
  x = conv_transpose(16, 3, strides=2, padding="same", activation="relu", dtype=policy)(x)
  # float32 output: the loss reads the logits of this sigmoid (see reconstruction_loss).
  images = conv_transpose(channels, 3, strides=1, padding="same", activation="sigmoid",
                          name="reconstruction", dtype="float32")(x)
  return keras.Model(z, images, name="decoder")


def reconstruction_loss(images, reconstruction):
  """Binary cross-entropy summed over pixels and channels: nats per image, shape [N]."""
  # From the sigmoid's logits (Keras finds them), not from probabilities clipped at 1e-7.
  bce = keras.backend.binary_crossentropy(images, reconstruction)
  return tf.reduce_sum(bce, axis=[1, 2, 3])


def kl_loss(mean, log_var):
  """KL(q(z | x) || N(0, I)) summed over latent dims: nats per image, shape [N]."""
  return -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=1)


class VAE(keras.Model):
  """Encoder + Sampling + decoder, trained on BCE + beta * KL."""

  def __init__(self, encoder, decoder, beta=1.0, **kwargs):
    super().__init__(**kwargs)
    self.encoder = encoder
    self.decoder = decoder
    self.sampling = Sampling(dtype="float32")
    self.beta = beta
    # Set by the Trainer when several processes train together (models/core_parallel.py).
    self.exchange = None
    self.trackers = {name: keras.metrics.Mean(name=name)
                     for name in ("loss", "reconstruction_loss", "kl_loss")}

  @property
  def metrics(self):
    return list(self.trackers.values())

  def call(self, images, training=False):
    mean, log_var = self.encoder(images, training=training)
    return self.decoder(self.sampling([mean, log_var]), training=training)

  def losses_of(self, images, training):
    """Per-image losses with a sampled z (the quantities the optimizer sees)."""
    mean, log_var = self.encoder(images, training=training)
    reconstruction = self.decoder(self.sampling([mean, log_var]), training=training)
    rec = reconstruction_loss(images, reconstruction)
    kl = kl_loss(mean, log_var)
    return rec, kl

  def _update_trackers(self, rec, kl, loss, weight=None):
    """Per-image values, or batch means with the batch size as their weight."""
    for name, value in (("loss", loss), ("reconstruction_loss", rec), ("kl_loss", kl)):
      self.trackers[name].update_state(value, sample_weight=weight)
    return {name: tracker.result() for name, tracker in self.trackers.items()}

  def make_train_function(self, force=False):
    """Keras' own, except that several steps per call (compile's steps_per_execution) run as one
    tf.while_loop traced without AutoGraph.

    Keras writes that loop as a Python `for` that AutoGraph converts, and AutoGraph traces the
    body twice (once to learn what the loop returns): a second trace, which this saves. Under
    a distribution strategy with several replicas, Keras' own loop (it runs the step per replica).
    """
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
      initial = {name: tf.zeros([]) for name in self.trackers}  # one step's outputs
      _, outputs = tf.while_loop(lambda step, _: step < steps,
                                 lambda step, _: (step + 1, one_step(iterator)),
                                 (tf.constant(0, steps.dtype), initial))
      return outputs

    self.train_function = tf.function(train_function, autograph=False, reduce_retracing=True)
    return self.train_function

  # AutoGraph has no rule against converting tf_keras (only `keras`), so it would rewrite Keras'
  # own source while tracing these steps, seconds of first-epoch warm-up. They have no
  # tensor-dependent Python control flow to convert.
  @tf.autograph.experimental.do_not_convert
  def train_step(self, images):
    if self.exchange is None:
      with tf.GradientTape() as tape:
        rec, kl = self.losses_of(images, training=True)
        # Replicas' gradients are summed (tf.distribute): each averages over its share of the
        # global batch. One replica: the plain batch mean.
        loss = (tf.reduce_mean(rec + self.beta * kl)
                / self.distribute_strategy.num_replicas_in_sync)
      grads = tape.gradient(loss, self.trainable_weights)
      self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
      return self._update_trackers(rec, kl, rec + self.beta * kl)
    # One of several processes (models/core_parallel.py): this one trains on its share of the
    # batch; the gradients of the batch mean are the sum of each share's.
    batch = tf.cast(tf.shape(images)[0], tf.float32)
    with tf.GradientTape() as tape:
      rec, kl = self.losses_of(self.exchange.share_of(images), training=True)
      loss = tf.reduce_sum(rec + self.beta * kl) / batch
    grads = tape.gradient(loss, self.trainable_weights)
    grads, (sums,) = self.exchange.sum_over_processes(
        grads, [tf.stack([tf.reduce_sum(rec), tf.reduce_sum(kl)])])
    self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
    rec, kl = sums[0] / batch, sums[1] / batch  # the whole batch's means
    return self._update_trackers(rec, kl, rec + self.beta * kl, weight=batch)

  @tf.autograph.experimental.do_not_convert
  def test_step(self, images):
    rec, kl = self.losses_of(images, training=False)
    return self._update_trackers(rec, kl, rec + self.beta * kl)


def build_vae(image_shape, latent_dim, hidden_units, beta=1.0, policy=None,
              conv_transpose=FastConv2DTranspose):
  """This project's VAE; `policy` "mixed_bfloat16" trains in bfloat16 (see build_encoder)."""
  return VAE(build_encoder(image_shape, latent_dim, hidden_units, policy),
             build_decoder(image_shape, latent_dim, policy, conv_transpose), beta=beta)


def copy_weights(source, target):
  """Gives `target` (same architecture, e.g. a float32 twin) the weights of `source`."""
  target.encoder.set_weights(source.encoder.get_weights())
  target.decoder.set_weights(source.decoder.get_weights())
  return target
