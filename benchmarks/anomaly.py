"""How well each candidate anomaly score tells normal digits from unusual images.

    make bench-anomaly       # or: .venv/bin/python benchmarks/anomaly.py [--model DIR]

The bundled 5,000 digits are split once (seeded): 4,000 go through the real pipeline
(`vae-pipeline run`, default settings: its own 4:1 train/eval split, the score calibrated on the
eval split at export), 1,000 are held out as normal images the model and its calibration never
saw. Out-of-distribution sets are built here, offline, from nothing but those held-out digits,
NumPy and Pillow:
- simple images: blank, constant grey, one bar or stroke, a few dots;
- transformed digits: inverted, rotated by 90 and by 180 degrees, flipped left-right;
- other content: uniform noise, capital letters drawn with a font, two digits overlaid.

Candidates, all from the pushed model's `score` signature and its calibration
(assets.extra/anomaly_calibration.json; fitted on the training and eval data only):
- loss: the per-image loss (the score before);
- typicality: |loss - the eval split's median loss|, unusual on either side;
- complexity-corrected: loss - b x PNG bits (b fitted on the eval split);
- latent distance: the code's Mahalanobis distance from the training codes;
- score: what the signature serves (models/anomaly.py): the larger robust z-score of the
  complexity-corrected loss and the latent distance.
Prints the AUROC of each against each set (1.0: every unusual image scores above every normal
one; 0.5: chance), the share of each set `is_anomaly` flags, and the false-positive rate of
`is_anomaly` on the held-out normal digits.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import stats

import vae_pipeline  # noqa: F401  (Keras 2 before TensorFlow loads)
import tensorflow as tf
from vae_pipeline import data
from vae_pipeline.data import records
from vae_pipeline.models import features

CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")
SEED = 0
HELD_OUT = 1000
PER_SET = 300
# Digits that a 180-degree turn or a left-right flip leaves a plausible digit (0, 1, 8, and 6/9
# into each other when turned): no score can call those images unusual.
SYMMETRIC = {"rotated 180": {0, 1, 6, 8, 9}, "flipped": {0, 1, 8}}
TARGET_AUROC, TARGET_FPR = 0.95, (0.005, 0.02)


def bundled_digits():
  spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
          features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
  images, labels = [], []
  for path in glob.glob(os.path.join(data.bundled_dir(), "*.tfrecord.gz")):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      parsed = tf.io.parse_single_example(record, spec)
      images.append(tf.io.decode_png(parsed[features.IMAGE_KEY]).numpy())
      labels.append(int(parsed[features.LABEL_KEY]))
  return np.stack(images), np.array(labels)


def train_through_the_pipeline(images, labels, folder):
  """The default `vae-pipeline run` on these digits; returns the pushed model's folder."""
  os.makedirs(os.path.join(folder, "data"))
  with tf.io.TFRecordWriter(os.path.join(folder, "data", "digits.tfrecord")) as writer:
    for image, label in zip(images, labels):
      writer.write(records.to_example(image, int(label)).SerializeToString())
  out = os.path.join(folder, "out")
  subprocess.run([CLI, "run", "--data", os.path.join(folder, "data"), "--output-dir", out],
                 check=True, stdout=subprocess.DEVNULL)
  return sorted(glob.glob(os.path.join(out, "serving", "image-vae", "*")))[-1]


def unusual_sets(digits, labels, rng):
  """{name: (uint8 [N, 28, 28, 1], labels of the digits it was made from or None)}."""
  n = PER_SET
  digits, labels, others = digits[:n], labels[:n], digits[n:2 * n]
  sets = {"blank": np.zeros((n, 28, 28, 1), np.uint8),
          "constant grey": np.stack([np.full((28, 28, 1), v, np.uint8)
                                     for v in rng.integers(30, 226, n)])}
  bars = []
  for _ in range(n):
    image = Image.new("L", (28, 28))
    x, y = (int(v) for v in rng.integers(4, 12, 2))
    length, width = int(rng.integers(8, 16)), int(rng.integers(2, 4))
    end = (x + length, y) if rng.random() < 0.5 else (x, y + length)
    ImageDraw.Draw(image).line([(x, y), end], fill=255, width=width)
    bars.append(np.asarray(image)[..., None])
  sets["one bar"] = np.stack(bars)
  dots = np.zeros((n, 28, 28, 1), np.uint8)
  for image in dots:
    for _ in range(int(rng.integers(2, 6))):
      y, x = rng.integers(4, 24, 2)
      image[y - 1:y + 1, x - 1:x + 1] = 255
  sets["a few dots"] = dots
  sets["inverted"] = 255 - digits
  sets["rotated 90"] = np.rot90(digits, 1, axes=(1, 2)).copy()
  sets["rotated 180"] = np.rot90(digits, 2, axes=(1, 2)).copy()
  sets["flipped"] = digits[:, :, ::-1].copy()
  sets["uniform noise"] = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)
  font = ImageFont.load_default(size=22)
  letters = []
  for i in range(n):
    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).text((5, 1), "ABCDEFGHJKLMNPQRSTUVWXYZ"[i % 24], fill=255, font=font)
    letters.append(np.asarray(image)[..., None])
  sets["letters"] = np.stack(letters)
  sets["two digits overlaid"] = np.maximum(digits, others)
  made_from = {"inverted", "rotated 90", "rotated 180", "flipped"}
  return {name: (images, labels if name in made_from else None) for name, images in sets.items()}


def signature_outputs(model_dir, images):
  score = tf.saved_model.load(model_dir).signatures[features.SCORE_SIGNATURE]
  examples = [records.to_example(image, None).SerializeToString() for image in images]
  outputs = {}
  for start in range(0, len(examples), 256):
    for name, value in score(examples=tf.constant(examples[start:start + 256])).items():
      outputs.setdefault(name, []).append(value.numpy())
  return {name: np.concatenate(values) for name, values in outputs.items()}


def candidates(outputs, calibration):
  loss = outputs[features.LOSS].astype(np.float64)
  return {
      "loss": loss,
      "typicality": np.abs(loss - calibration["loss_median"]),
      "complexity-corrected": loss - calibration["complexity_slope"]
                              * outputs[features.COMPLEXITY_BITS],
      "latent distance": outputs[features.LATENT_DISTANCE].astype(np.float64),
      "score (served)": outputs[features.SCORE].astype(np.float64),
  }


def auroc(normal, unusual):
  """P(an unusual image scores above a normal one), ties counting half (Mann-Whitney U)."""
  ranks = stats.rankdata(np.concatenate([normal, unusual]))  # ties get their average rank
  u = ranks[len(normal):].sum() - len(unusual) * (len(unusual) + 1) / 2
  return u / (len(normal) * len(unusual))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="a pushed model trained on the first 4,000 digits of "
                                      "this script's split (default: train one now)")
  args = parser.parse_args()
  images, labels = bundled_digits()
  rng = np.random.default_rng(SEED)
  order = rng.permutation(len(images))
  train, held = order[:-HELD_OUT], order[-HELD_OUT:]
  with tempfile.TemporaryDirectory() as folder:
    model_dir = args.model or train_through_the_pipeline(images[train], labels[train], folder)
    with open(os.path.join(model_dir, "assets.extra", "anomaly_calibration.json")) as f:
      calibration = json.load(f)
    normal = signature_outputs(model_dir, images[held])
    normal_scores = candidates(normal, calibration)
    names = list(normal_scores)
    print(f"model: {model_dir}\nheld-out normal digits: {len(held)}; calibration: "
          f"{calibration['eval_count']} eval-split digits, quantile "
          f"{calibration['anomaly_quantile']}\n")
    print("| set | " + " | ".join(names) + " | flagged |")
    print("|---|" + "---|" * (len(names) + 1))
    results = {}
    for name, (unusual, made_from) in unusual_sets(images[held], labels[held], rng).items():
      outputs = signature_outputs(model_dir, unusual)
      scores = candidates(outputs, calibration)
      results[name] = {c: auroc(normal_scores[c], scores[c]) for c in names}
      flagged = outputs[features.IS_ANOMALY].mean()
      print(f"| {name} | " + " | ".join(f"{results[name][c]:.3f}" for c in names)
            + f" | {flagged:.0%} |", flush=True)
      if name in SYMMETRIC:  # the same set without the digits it leaves digits
        keep = ~np.isin(made_from, list(SYMMETRIC[name]))
        row = {c: auroc(normal_scores[c], scores[c][keep]) for c in names}
        print(f"| {name}, digits it changes ({keep.sum()}) | "
              + " | ".join(f"{row[c]:.3f}" for c in names)
              + f" | {outputs[features.IS_ANOMALY][keep].mean():.0%} |", flush=True)
    fpr = normal[features.IS_ANOMALY].mean()
    print(f"\nfalse-positive rate of is_anomaly on the held-out normal digits: {fpr:.2%} "
          f"(target {TARGET_FPR[0]:.1%}-{TARGET_FPR[1]:.0%})")
    simple = ["blank", "constant grey", "one bar", "a few dots"]
    transformed = ["inverted", "rotated 90", "rotated 180", "flipped"]
    worst = min((results[s]["score (served)"], s) for s in simple + transformed)
    print(f"lowest AUROC of the served score on a simple or transformed set: {worst[0]:.3f} "
          f"({worst[1]}; target {TARGET_AUROC})")


if __name__ == "__main__":
  main()
