"""Transform's preprocessing_fn: PNG bytes in, float32 [H, W, C] in [0, 1] out."""
import numpy as np
import pytest
import tensorflow as tf

from vae_pipeline.data.images import png_bytes
from vae_pipeline.models import features
from vae_pipeline.models import preprocessing


def test_decodes_pngs_and_scales_to_unit_interval():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
  images[0, 0, 0, 0], images[0, 0, 1, 0] = 0, 255
  pngs = tf.constant([[png_bytes(image)] for image in images])  # [N, 1], as the schema gives
  out = preprocessing.preprocessing_fn({features.IMAGE_KEY: pngs},
                                       {"image_shape": [28, 28, 1]})
  got = out[features.TRANSFORMED_IMAGE_KEY]
  assert got.dtype == tf.float32 and got.shape == (3, 28, 28, 1)
  np.testing.assert_allclose(got.numpy(), images / 255.0, atol=1e-7)
  assert got.numpy()[0, 0, 0, 0] == 0.0 and got.numpy()[0, 0, 1, 0] == 1.0


def test_rgb_images_keep_their_colours():
  image = np.zeros((8, 8, 3), np.uint8)
  image[..., 0] = 200  # pure red
  out = preprocessing.preprocessing_fn({features.IMAGE_KEY: tf.constant([[png_bytes(image)]])},
                                       {"image_shape": [8, 8, 3]})
  np.testing.assert_allclose(out[features.TRANSFORMED_IMAGE_KEY].numpy()[0, 0, 0],
                             [200 / 255.0, 0.0, 0.0], atol=1e-7)


def test_sparse_input_from_a_schema_without_shape_is_accepted():
  png = png_bytes(np.full((4, 4, 1), 51, np.uint8))
  sparse = tf.sparse.from_dense(tf.constant([[png]]))
  out = preprocessing.preprocessing_fn({features.IMAGE_KEY: sparse}, {"image_shape": [4, 4, 1]})
  np.testing.assert_allclose(out[features.TRANSFORMED_IMAGE_KEY].numpy(), 0.2, atol=1e-7)


def test_an_image_of_another_size_is_an_error():
  png = png_bytes(np.zeros((8, 8, 1), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocessing.preprocessing_fn({features.IMAGE_KEY: tf.constant([[png]])},
                                   {"image_shape": [28, 28, 1]})
