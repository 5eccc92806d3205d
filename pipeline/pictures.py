"""PNG pictures of what a model learned: originals vs reconstructions, samples from the prior."""
import glob
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vae_pipeline.models import features  # noqa: E402


def read_examples(examples_uri, split="eval", count=10, pool=1000):
  """`count` serialized raw tf.Examples spread evenly over the first `pool` of a split.

  Spread out because datasets are often stored sorted by class.
  """
  files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(pool)]
  step = max(1, len(records) // count)
  return records[::step][:count]


def _show(axis, image):
  image = np.clip(image, 0.0, 1.0)
  if image.shape[-1] == 1:
    axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    axis.imshow(image)
  axis.set_xticks([])
  axis.set_yticks([])


def reconstructions_figure(model, serialized_examples, path):
  """Top row: the inputs (as the model sees them); bottom row: reconstructions with their loss."""
  outputs = model.signatures[features.SERVING_SIGNATURE](
      examples=tf.constant(serialized_examples))
  parsed = tf.io.parse_example(serialized_examples,
                               {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
  channels = outputs[features.RECONSTRUCTION].shape[-1]
  originals = [tf.io.decode_png(png, channels=channels).numpy() / 255.0
               for png in parsed[features.IMAGE_KEY].numpy()]
  count = len(originals)
  figure, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.9), squeeze=False)
  for i in range(count):
    _show(axes[0, i], originals[i])
    _show(axes[1, i], outputs[features.RECONSTRUCTION][i].numpy())
    axes[1, i].set_xlabel(f"{outputs[features.RECONSTRUCTION_LOSS][i].numpy():.0f}", fontsize=8)
  axes[0, 0].set_ylabel("input", fontsize=9)
  axes[1, 0].set_ylabel("reconstruction", fontsize=9)
  figure.suptitle("Originals vs reconstructions (z = mean; BCE in nats under each)", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def prior_samples_figure(model, path, rows=8, columns=8, seed=0):
  """Images decoded from z ~ N(0, I): what the model generates."""
  decode = model.signatures[features.DECODE_SIGNATURE]
  latent_dim = decode.structured_input_signature[1][features.LATENT_INPUT].shape[-1]
  z = np.random.default_rng(seed).standard_normal((rows * columns, latent_dim)).astype(np.float32)
  images = decode(z=tf.constant(z))[features.IMAGES].numpy()
  figure, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
  for axis, image in zip(axes.flat, images):
    _show(axis, image)
  figure.suptitle(f"Samples decoded from the prior, z ~ N(0, I) in {latent_dim} dims", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def write_pictures(model_dir, examples_uri, out_dir):
  """Writes both pictures for the SavedModel at `model_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  model = tf.saved_model.load(model_dir)
  return [
      reconstructions_figure(model, read_examples(examples_uri),
                             os.path.join(out_dir, "reconstructions.png")),
      prior_samples_figure(model, os.path.join(out_dir, "prior_samples.png")),
  ]
