"""The raw tf.Example format every source is converted to: `image` PNG bytes, optional `label`."""
import tensorflow as tf

from vae_pipeline.data import images
from vae_pipeline.models import features


def to_example(pixels, label=None) -> tf.train.Example:
  """uint8 [H, W, C] (or [H, W]) and an optional int label -> tf.train.Example."""
  feature = {features.IMAGE_KEY: tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[images.png_bytes(pixels)]))}
  if label is not None:
    feature[features.LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature))
