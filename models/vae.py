"""The convolutional VAE, after the course lab: Sampling, encoder, decoder, losses, model.

Everything is `tf_keras` (Keras 2): the Transform graph is a tf_keras model and both must live
in one SavedModel. The decoder's transposed convs and the training loop run on CPU speed tricks
that compute the same function as the stock Keras pieces (models/fast_layers.py).
"""
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import fast_layers

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


def build_decoder(image_shape, latent_dim, policy=None,
                  conv_transpose=fast_layers.FastConv2DTranspose):
  """z -> image in [0, 1]; the first feature map is the encoder's last one.

  No BatchNorm here: as good without it (benchmarks/quality.py), and faster. `conv_transpose`:
  the class of every transposed conv (keras.layers.Conv2DTranspose gives the same model on
  stock kernels).
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


class VAE(fast_layers.OneTraceStepsLoop, keras.Model):
  """Encoder + Sampling + decoder, trained on BCE + beta * KL."""

  def __init__(self, encoder, decoder, beta=1.0, **kwargs):
    super().__init__(**kwargs)
    self.encoder = encoder
    self.decoder = decoder
    self.sampling = Sampling(dtype="float32")
    self.beta = beta
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
    return reconstruction_loss(images, reconstruction), kl_loss(mean, log_var)

  def _update_trackers(self, rec, kl, loss, weight=None):
    """Per-image values, or batch means with the batch size as their weight."""
    for name, value in (("loss", loss), ("reconstruction_loss", rec), ("kl_loss", kl)):
      self.trackers[name].update_state(value, sample_weight=weight)
    return {name: tracker.result() for name, tracker in self.trackers.items()}

  # AutoGraph has no rule against converting tf_keras (only `keras`), so it would rewrite Keras'
  # own source while tracing these steps, seconds of first-epoch warm-up. They have no
  # tensor-dependent Python control flow to convert.
  @tf.autograph.experimental.do_not_convert
  def train_step(self, images):
    if self.distribute_strategy.num_replicas_in_sync == 1:
      with tf.GradientTape() as tape:
        rec, kl = self.losses_of(images, training=True)
        loss = tf.reduce_mean(rec + self.beta * kl)
      grads = tape.gradient(loss, self.trainable_weights)
      self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
      return self._update_trackers(rec, kl, rec + self.beta * kl)
    # Several replicas (tf.distribute), each with its share of the global batch: the optimizer
    # sums their gradients, so each divides its loss sum by the global batch size (summed over
    # replicas: shares may differ by an image). Every replica then reports the global means.
    # BatchNorm normalizes each share with that share's statistics (as on GPUs without SyncBN).
    with tf.GradientTape() as tape:
      rec, kl = self.losses_of(images, training=True)
      sums = tf.distribute.get_replica_context().all_reduce("sum", tf.stop_gradient(tf.stack(
          [tf.reduce_sum(rec), tf.reduce_sum(kl), tf.cast(tf.shape(rec)[0], tf.float32)])))
      loss = tf.reduce_sum(rec + self.beta * kl) / sums[2]
    grads = tape.gradient(loss, self.trainable_weights)
    self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
    rec, kl = sums[0] / sums[2], sums[1] / sums[2]
    return self._update_trackers(rec, kl, rec + self.beta * kl, weight=sums[2])

  @tf.autograph.experimental.do_not_convert
  def test_step(self, images):
    rec, kl = self.losses_of(images, training=False)
    return self._update_trackers(rec, kl, rec + self.beta * kl)


def build_vae(image_shape, latent_dim, hidden_units, beta=1.0, policy=None,
              conv_transpose=fast_layers.FastConv2DTranspose):
  """This project's VAE; `policy` "mixed_bfloat16" trains in bfloat16 (see build_encoder)."""
  return VAE(build_encoder(image_shape, latent_dim, hidden_units, policy),
             build_decoder(image_shape, latent_dim, policy, conv_transpose), beta=beta)


def copy_weights(source, target):
  """Gives `target` (same architecture, e.g. a float32 twin) the weights of `source`."""
  target.encoder.set_weights(source.encoder.get_weights())
  target.decoder.set_weights(source.decoder.get_weights())
  return target
