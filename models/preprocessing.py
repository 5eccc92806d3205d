"""TensorFlow Transform: PNG bytes -> float32 [H, W, C] in [0, 1].

Only the image is transformed: labels are optional and never needed for training, and leaving
them out means the serving signature accepts examples without one.
"""
import tensorflow as tf

from vae_pipeline.models import features


def image_shape_from(custom_config):
  return tuple(int(d) for d in custom_config["image_shape"])


def decode_images(png_bytes, image_shape):
  """[N] PNG strings -> [N, H, W, C] float32 in [0, 1]."""
  height, width, channels = image_shape

  def decode(png):
    image = tf.io.decode_png(png, channels=channels)
    return tf.ensure_shape(image, [height, width, channels])

  images = tf.map_fn(decode, png_bytes,
                     fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))
  return tf.cast(images, tf.float32) / 255.0


def preprocessing_fn(inputs, custom_config):
  """The Transform component's entry point (named by dotted path in the pipeline)."""
  png = inputs[features.IMAGE_KEY]
  if isinstance(png, tf.SparseTensor):  # a schema without a fixed shape gives VarLen features
    png = tf.sparse.to_dense(png, default_value=b"")
  png = tf.reshape(png, [-1])  # [N, 1] -> [N]: one image per example
  return {features.TRANSFORMED_IMAGE_KEY: decode_images(png, image_shape_from(custom_config))}
