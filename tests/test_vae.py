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
