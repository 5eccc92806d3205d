"""Using a pushed model: load it, feed it images from any source, save what comes back.

Only the SavedModel's signatures are used (what TensorFlow Serving would serve), so these work
on any model the pipeline pushed, without this project's model code.
"""
import contextlib
import csv
import io
import os
import statistics
import sys
import uuid
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from vae_pipeline.data import images as image_lib
from vae_pipeline.data import records
from vae_pipeline.data import sources
from vae_pipeline.models import features

BATCH = 256


class UseError(ValueError):
  """A mistake the user can fix (a wrong path, a model of another shape): one line, no traceback."""


class Model:
  """A pushed SavedModel and what its signatures say about it."""

  def __init__(self, path):
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      raise UseError(f"--model {path}: not a SavedModel folder (no saved_model.pb)")
    self.path = path
    self.loaded = tf.saved_model.load(path)
    decode = self.signature(features.DECODE_SIGNATURE)
    self.latent_dim = int(decode.structured_input_signature[1][features.LATENT_INPUT].shape[1])
    self.image_shape = tuple(int(d) for d in
                             decode.structured_outputs[features.IMAGES].shape[1:])

  def signature(self, name):
    """The named signature; a UseError if this model lacks it (another project's SavedModel,
    or one pushed by a version of this pipeline that did not export it yet)."""
    if name not in self.loaded.signatures:
      raise UseError(f"the model {self.path} has no {name!r} signature (it has "
                     f"{', '.join(sorted(self.loaded.signatures)) or 'none'}): pass --model with a "
                     "model this pipeline pushed, or push a new one with `vae-pipeline run`")
    return self.loaded.signatures[name]

  def call(self, signature, **inputs):
    return {k: v.numpy() for k, v in self.signature(signature)(**inputs).items()}

  def on_examples(self, signature, examples: List[bytes], show=None):
    """Calls an examples-in signature in batches; concatenates each output."""
    parts = []
    for start in range(0, len(examples), BATCH):
      parts.append(self.call(signature, **{features.EXAMPLES_INPUT:
                                           tf.constant(examples[start:start + BATCH])}))
      if show:
        progress(show, min(start + BATCH, len(examples)), len(examples))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def latest_pushed(serving_dir):
  """The newest version folder the Pusher wrote under serving_dir."""
  versions = ([v.strip("/") for v in tf.io.gfile.listdir(serving_dir)]
              if tf.io.gfile.isdir(serving_dir) else [])
  versions = [v for v in versions if v.isdigit()]
  if not versions:
    raise UseError(f"no pushed model in {serving_dir}: run `vae-pipeline run` first, or pass "
                   "--model PATH")
  return os.path.join(serving_dir, max(versions, key=int))


def progress(what, done, total, width=30):
  """A progress bar on stderr, redrawn in place, for work of more than a couple of batches."""
  if total >= 2 * BATCH:
    filled = width * done // total
    end = "\n" if done >= total else "\r"
    print(f"{what} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}", end=end,
          file=sys.stderr, flush=True)


def read_images(path, image_shape, size_policy="reject") -> Tuple[List[str], np.ndarray]:
  names, pixels, _ = read_labelled_images(path, image_shape, size_policy)
  return names, pixels


def read_labelled_images(path, image_shape, size_policy="reject"):
  """Every image of a file or folder (any source kind) as uint8 [N, H, W, C] of the model's
  shape; names identify them (file paths, or file#index for multi-image files). Images of
  another size are refused unless `size_policy` says to resize or pad them."""
  if not os.path.exists(path):
    raise UseError(f"{path}: no such file or folder")
  try:
    _, units, _ = sources.plan_root(path)
  except sources.SourceError as error:
    raise UseError(str(error)) from None
  names, arrays, labels, bad = [], [], [], []
  for unit in units:
    for name, payload, label in sources.read(unit):
      try:
        arrays.append(image_lib.normalize(payload, image_shape, size_policy))
        names.append(name)
        labels.append(label)
      except image_lib.BadInput as error:
        bad.append(f"{name} ({error})")
  if bad and all("differs from the target" in reason for reason in bad):
    height, width, channels = image_shape
    raise UseError(f"{path}: {len(bad)} image(s) are not {height}x{width}, the size this model "
                   f"takes ({height}x{width}x{channels}), e.g. {bad[0]}; pass --size-policy "
                   "resize or pad to convert them")
  if bad:
    raise UseError(f"{len(bad)} unreadable input(s): " + "; ".join(bad[:5])
                   + (" ..." if len(bad) > 5 else ""))
  if not arrays:
    raise UseError(f"{path}: no images found")
  return names, np.stack(arrays), labels


def to_examples(pixels: np.ndarray) -> List[bytes]:
  return [records.to_example(p).SerializeToString() for p in pixels]


def grid(images: np.ndarray, columns: int) -> Image.Image:
  """[N, H, W, C] floats in [0, 1] -> one picture, `columns` images per row, 2 px gaps."""
  count, height, width, channels = images.shape
  rows = -(-count // columns)
  canvas = np.ones((rows * (height + 2) + 2, columns * (width + 2) + 2, channels), np.float32)
  for i, image in enumerate(images):
    top, left = 2 + (i // columns) * (height + 2), 2 + (i % columns) * (width + 2)
    canvas[top:top + height, left:left + width] = image
  pixels = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


@contextlib.contextmanager
def written(*outs):
  """Temporary paths beside `outs`, one each, that replace them (os.replace, atomic) once the
  block has written them all. If anything fails (or Ctrl-C) the temporary files are removed and
  no output is left changed or half-written: every output is written whole, or not at all.
  The temporary names keep the extension (the picture writers choose the format by it)."""
  temps = []
  for out in outs:
    folder, name = os.path.split(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(name)
    temps.append(os.path.join(folder, f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
                                      f"{extension}"))
  try:
    yield temps
    for temp, out in zip(temps, outs):
      os.replace(temp, out)
  except BaseException:
    for temp in temps:
      with contextlib.suppress(OSError):
        os.remove(temp)
    raise


def scaled(picture: Image.Image, scale=3) -> Image.Image:
  return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def save_picture(picture: Image.Image, out, scale=3):
  """Writes the picture, `scale` times enlarged, whole or not at all (see `written`)."""
  with written(out) as (temp,):
    scaled(picture, scale).save(temp)
  return out


def generate(model: Model, count, seed, out):
  images = model.call(features.GENERATE_SIGNATURE,
                      **{features.COUNT_INPUT: tf.constant(count, tf.int32),
                         features.SEED_INPUT: tf.constant(seed, tf.int64)})[features.IMAGES]
  return save_picture(grid(images, columns=min(count, 10)), out)


def reconstruct(model: Model, path, out, limit=50, size_policy="reject"):
  _, pixels = read_images(path, model.image_shape, size_policy)
  pixels = pixels[:limit]
  outputs = model.on_examples(features.SERVING_SIGNATURE, to_examples(pixels))
  originals = pixels.astype(np.float32) / 255.0
  columns = min(len(pixels), 10)
  # Rows of originals, each followed by its reconstructions.
  rows = []
  for start in range(0, len(pixels), columns):
    chunk = slice(start, start + columns)
    pad = columns - len(originals[chunk])
    filler = np.ones((pad,) + model.image_shape, np.float32)
    rows += [np.concatenate([originals[chunk], filler]),
             np.concatenate([outputs[features.RECONSTRUCTION][chunk], filler])]
  return save_picture(grid(np.concatenate(rows), columns), out)


def encode(model: Model, path, out, size_policy="reject"):
  names, pixels = read_images(path, model.image_shape, size_policy)
  outputs = model.on_examples(features.ENCODE_SIGNATURE, to_examples(pixels), show="encoded")
  dims = range(model.latent_dim)
  rows = [["image"] + [f"z_mean_{d}" for d in dims] + [f"z_log_var_{d}" for d in dims]]
  for name, mean, log_var in zip(names, outputs[features.Z_MEAN], outputs[features.Z_LOG_VAR]):
    rows.append([name] + [f"{v:.6g}" for v in mean] + [f"{v:.6g}" for v in log_var])
  write_csv(rows, out)
  return out


def score(model: Model, path, out, size_policy="reject"):
  """Anomaly scores, highest (most unusual) first, with each image's percentile among the eval
  split's scores, whether it is an anomaly (above the model's threshold) and its loss. A model
  pushed before the score was calibrated has the score column only."""
  names, pixels = read_images(path, model.image_shape, size_policy)
  outputs = model.on_examples(features.SCORE_SIGNATURE, to_examples(pixels), show="scored")
  scores = outputs[features.SCORE]
  columns = [name for name in (features.PERCENTILE, features.IS_ANOMALY, features.LOSS)
             if name in outputs]
  formats = {features.PERCENTILE: lambda v: f"{v:.4f}", features.IS_ANOMALY: lambda v: int(v),
             features.LOSS: lambda v: f"{v:.3f}"}
  order = np.argsort(-scores, kind="stable")
  write_csv([["rank", "image", "score"] + columns]
            + [[rank, names[i], f"{scores[i]:.3f}"]
               + [formats[name](outputs[name][i]) for name in columns]
               for rank, i in enumerate(order, 1)], out)
  if features.IS_ANOMALY in outputs:
    flagged = int(np.sum(outputs[features.IS_ANOMALY]))
    print(f"{flagged} of {len(scores)} image(s) flagged as anomalies (is_anomaly: above the "
          "model's threshold on its eval split's scores)")
    for i in order[:min(flagged, 10)]:
      print(f"  {names[i]}: score {scores[i]:.2f}, percentile {outputs[features.PERCENTILE][i]:.3f}")
  return out


def interpolate(model: Model, first, second, out, steps=10, size_policy="reject"):
  """Decodes `steps` points on the line between two images' z means: a strip of pictures."""
  if steps < 2:
    raise UseError("--steps must be at least 2")
  pixels = np.concatenate([read_images(p, model.image_shape, size_policy)[1][:1]
                           for p in (first, second)])
  means = model.on_examples(features.ENCODE_SIGNATURE, to_examples(pixels))[features.Z_MEAN]
  weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
  z = (1.0 - weights) * means[0] + weights * means[1]
  decoded = model.call(features.DECODE_SIGNATURE,
                       **{features.LATENT_INPUT: tf.constant(z)})[features.IMAGES]
  strip = np.concatenate([pixels[:1].astype(np.float32) / 255.0, decoded,
                          pixels[1:].astype(np.float32) / 255.0])
  return save_picture(grid(strip, columns=len(strip)), out)


def latent_plot(model: Model, path, out, limit=2000, size_policy="reject"):
  """A scatter of the images' z means coloured by label (pictures.latent_figure); for a 2-D
  latent space also the decoded manifold (a grid of z over the prior's central 90%) next to
  `out`. Returns the files."""
  from vae_pipeline.client import pictures  # pylint: disable=import-outside-toplevel  (matplotlib)

  _, pixels, labels = read_labelled_images(path, model.image_shape, size_policy)
  keep = np.random.default_rng(0).permutation(len(pixels))[:limit]  # a sample, not the first
  pixels, labels = pixels[keep], [labels[i] for i in keep]
  means = model.on_examples(features.ENCODE_SIGNATURE, to_examples(pixels),
                            show="encoded")[features.Z_MEAN]
  outs = [out]
  decoded = None
  if model.latent_dim == 2:
    decoded = manifold(model)
    outs.append(os.path.splitext(out)[0] + "_manifold.png")
  with written(*outs) as temps:  # both files or neither
    pictures.latent_figure(means, labels, temps[0])
    if decoded is not None:
      scaled(decoded, scale=2).save(temps[1])
  return outs


def manifold(model: Model, steps=15) -> Image.Image:
  """For a 2-D latent space: images decoded from a grid of z over the prior's central 90%."""
  ticks = np.array([statistics.NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, steps)],
                   np.float32)
  z = np.array([[x, y] for y in ticks[::-1] for x in ticks], np.float32)
  decoded = model.call(features.DECODE_SIGNATURE,
                       **{features.LATENT_INPUT: tf.constant(z)})[features.IMAGES]
  return grid(decoded, columns=steps)


def write_csv(rows, out):
  """Rows as CSV to `out` ("-" for standard output), whole or not at all (see `written`)."""
  text = io.StringIO()
  csv.writer(text).writerows(rows)
  if out == "-":
    sys.stdout.write(text.getvalue())
    sys.stdout.flush()
    return
  with written(out) as (temp,):
    with open(temp, "w", newline="") as f:
      f.write(text.getvalue())

