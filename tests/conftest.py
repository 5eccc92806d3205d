"""Shared fixtures. Importing vae_pipeline first selects Keras 2 before TensorFlow loads."""

import numpy as np
import pytest

import vae_pipeline  # noqa: F401


@pytest.fixture(scope="session")
def digits():
  """(images uint8 [5000, 28, 28, 1], labels) from the bundled TFRecord file."""
  import glob
  import os
  import tensorflow as tf
  from vae_pipeline import data
  from vae_pipeline.models import features
  files = glob.glob(os.path.join(data.bundled_dir(), "*.tfrecord.gz"))
  spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
          features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  images, labels = [], []
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    parsed = tf.io.parse_single_example(record, spec)
    images.append(tf.io.decode_png(parsed[features.IMAGE_KEY], channels=1).numpy())
    labels.append(int(parsed[features.LABEL_KEY]))
  return np.stack(images), np.array(labels)


COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}


@pytest.fixture(scope="session")
def rgb_run(tmp_path_factory, digits):
  """The whole pipeline on 240 RGB 32x32 digits in three class folders (red, green, blue)."""
  import os
  from PIL import Image
  from tests import image_files as files
  from vae_pipeline import local_runner
  from vae_pipeline.config import PipelineConfig
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
