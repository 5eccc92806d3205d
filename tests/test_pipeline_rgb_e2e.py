"""The whole pipeline on a folder of RGB images in class sub-folders, at another image shape
(32x32x3): ingestion, Transform, Trainer, Evaluator and the serving signature follow the config."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files as files
from vae_pipeline import local_runner
from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import features

pytestmark = pytest.mark.e2e

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory, digits):
  folder = tmp_path_factory.mktemp("rgb")
  for i, image in enumerate(digits[0][:240]):
    name = list(COLOURS)[i % 3]
    padded = np.pad(image[..., 0], 2)[..., None] * np.array(COLOURS[name], np.uint8)  # 32x32x3
    os.makedirs(folder / name, exist_ok=True)
    fmt = "JPEG" if i % 2 else "PNG"
    with open(folder / name / f"{i}.{fmt.lower()}", "wb") as f:
      f.write(files.encode(Image.fromarray(padded), fmt, **({"quality": 95} if fmt == "JPEG" else {})))
  config = PipelineConfig(data=str(folder), output_dir=str(tmp_path_factory.mktemp("out")),
                          epochs=2, batch_size=32, max_loss=10_000)
  summary = local_runner.run(config, show_progress=False)
  return config, summary


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


def test_pictures_are_in_colour(rgb_run):
  config, summary = rgb_run
  assert len(summary.pictures) == 2
  with Image.open(summary.pictures[0]) as picture:
    pixels = np.asarray(picture.convert("RGB")).astype(int)
  # Some pixels are strongly red, green or blue: the inputs were drawn in colour.
  assert (pixels[..., 0] - pixels[..., 1] > 100).any() and (pixels[..., 1] - pixels[..., 0] > 100).any()
