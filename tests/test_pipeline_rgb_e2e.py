"""The whole pipeline on a folder of RGB images in class sub-folders, at another image shape
(32x32x3): ingestion, Transform, Trainer, Evaluator and the serving signature follow the config.
The run (`rgb_run`) is in conftest.py: the run report's tests use it too."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files as files
from vae_pipeline.models import features

pytestmark = pytest.mark.e2e


def test_every_component_ran_with_the_images_own_shape(rgb_run):
  config, summary = rgb_run
  assert config.resolved().image_shape == (32, 32, 3)  # found from the first image
  assert {c.state for c in summary.components} == {"COMPLETE"}
  assert summary.inputs == 240 and summary.bad_inputs == 0
  assert summary.label_names == ["blue", "green", "red"]
  assert summary.blessed and summary.pushed_dir


def test_the_pushed_signature_reconstructs_rgb_images(rgb_run, digits):
  config, summary = rgb_run
  model = tf.saved_model.load(summary.pushed_dir)
  red = np.pad(digits[0][300, ..., 0], 2)[..., None] * np.array([1, 0, 0], np.uint8)
  example = tf.train.Example(features=tf.train.Features(feature={features.IMAGE_KEY: tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[files.encode(Image.fromarray(red))]))}))
  out = model.signatures[features.SERVING_SIGNATURE](
      examples=tf.constant([example.SerializeToString()]))
  assert out[features.RECONSTRUCTION].shape == (1, 32, 32, 3)
  assert np.isfinite(out[features.LOSS].numpy()).all()
  decoded = model.signatures[features.DECODE_SIGNATURE](z=tf.zeros((2, config.latent_dim)))
  assert decoded[features.IMAGES].shape == (2, 32, 32, 3)


def test_report_pictures_are_in_colour(rgb_run):
  config, summary = rgb_run
  with Image.open(os.path.join(os.path.dirname(summary.report), "reconstructions.png")) as picture:
    pixels = np.asarray(picture.convert("RGB")).astype(int)
  # Some pixels are strongly red, green or blue: the inputs were drawn in colour.
  assert (pixels[..., 0] - pixels[..., 1] > 100).any() and (pixels[..., 1] - pixels[..., 0] > 100).any()
