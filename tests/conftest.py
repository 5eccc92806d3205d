"""Shared fixtures. Importing vae_pipeline first selects Keras 2 before TensorFlow loads."""
import io

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
