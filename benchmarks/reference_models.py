"""The two reference VAEs the quality benchmark compares with, as their authors wrote them.

- Keras example ("Variational AutoEncoder", keras.io/examples/generative/vae): no BatchNorm,
  Dense(16) before a 2-D latent, Adam(1e-3), batch 128.
- Course lab (the project's starting point): BatchNorm after every layer, Dense(20), 2-D
  latent, Adam(1e-3), batch 128, losses evaluated as trained (no BatchNorm recalibration).

Both reuse this project's VAE class (Sampling, losses, train step): only the layers differ.
"""
import tf_keras as keras

from vae_pipeline.models import vae as vae_lib

LEARNING_RATE = 1e-3
BATCH_SIZE = 128


def keras_example(latent_dim=2):
  images = keras.Input(shape=(28, 28, 1))
  x = keras.layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(images)
  x = keras.layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
  x = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(x))
  encoder = keras.Model(images, [keras.layers.Dense(latent_dim)(x),
                                 keras.layers.Dense(latent_dim)(x)])
  z = keras.Input(shape=(latent_dim,))
  x = keras.layers.Dense(7 * 7 * 64, activation="relu")(z)
  x = keras.layers.Reshape((7, 7, 64))(x)
  x = keras.layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
  x = keras.layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
  output = keras.layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
  return vae_lib.VAE(encoder, keras.Model(z, output))


def course_lab(latent_dim=2):
  bn = keras.layers.BatchNormalization
  images = keras.Input(shape=(28, 28, 1))
  x = bn()(keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(images))
  x = bn()(keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x))
  x = bn()(keras.layers.Dense(20, activation="relu")(keras.layers.Flatten()(x)))
  encoder = keras.Model(images, [keras.layers.Dense(latent_dim)(x),
                                 keras.layers.Dense(latent_dim)(x)])
  z = keras.Input(shape=(latent_dim,))
  x = bn()(keras.layers.Dense(7 * 7 * 64, activation="relu")(z))
  x = keras.layers.Reshape((7, 7, 64))(x)
  x = bn()(keras.layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(x))
  x = bn()(keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x))
  output = keras.layers.Conv2DTranspose(1, 3, strides=1, padding="same", activation="sigmoid")(x)
  return vae_lib.VAE(encoder, keras.Model(z, output))


REFERENCES = {"Keras example": keras_example, "course lab": course_lab}
