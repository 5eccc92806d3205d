"""BatchNorm statistics re-estimated after training make inference match what was learned."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import trainer
from vae_pipeline.models import vae as vae_lib


def _deterministic_loss(model, images, training):
  mean, log_var = model.encoder(images, training=training)
  reconstruction = model.decoder(mean, training=training)
  return float(tf.reduce_mean(vae_lib.reconstruction_loss(images, reconstruction)
                              + vae_lib.kl_loss(mean, log_var)))


def test_recalibrated_statistics_are_the_population_average(digits):
  keras.utils.set_random_seed(0)
  images = digits[0][:600].astype(np.float32) / 255.0
  model = vae_lib.build_vae((28, 28, 1), latent_dim=2, hidden_units=20)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.fit(images, batch_size=50, epochs=2, verbose=0)

  batches = tf.data.Dataset.from_tensor_slices(images).batch(200)  # three equal batches
  before = _deterministic_loss(model, images, training=False)
  trainer.recalibrate_batchnorm(model, batches)

  # The first BatchNorm follows the first convolution: its moving mean must be the exact mean
  # of that convolution's output over all 600 images (equal batches, cumulative average).
  first_conv = model.encoder.layers[1]
  first_bn = model.encoder.layers[2]
  assert isinstance(first_bn, keras.layers.BatchNormalization)
  expected = first_conv(images).numpy().mean(axis=(0, 1, 2))
  np.testing.assert_allclose(first_bn.moving_mean.numpy(), expected, rtol=1e-3, atol=1e-4)
  assert first_bn.momentum == 0.99  # restored

  # Inference now agrees with the batch statistics the model was trained under, and is better
  # than with the moving averages that still remember the untrained start.
  after = _deterministic_loss(model, images, training=False)
  batch_mode = np.mean([_deterministic_loss(model, b, training=True) for b in batches])
  assert abs(after - batch_mode) < 0.03 * batch_mode, (after, batch_mode)
  assert after < before, (after, before)
