"""The anomaly score the `score` signature serves, and its calibration on the eval split.

The per-image loss alone rates simple images (blank, one stroke, a few dots) as *more* normal than
typical digits: they are easy to reconstruct, whatever they are (the known failure of
likelihood-based novelty scores). The score combines two tests, each standardized on the eval
split, and takes the larger (benchmarks/anomaly.py measures these and the alternatives, and a
third, the typicality test's low side, which lowered the AUROC on transformed digits):

- the loss corrected for the image's complexity (Serra et al., ICLR 2020): loss - b x L(x), with
  L(x) the image's length in bits as PNG (a generic lossless compressor) and b the slope of the
  loss against L(x) over the eval split. The slope is fitted, not 1 nat per bit as for a
  normalized density, because the grey-level BCE is not one: it sets the units of the two terms
  from the eval data, so the correction removes what complexity explains in normal images;
- the latent code's Mahalanobis distance from the training codes (z = mean), under a Gaussian fit
  of their aggregate posterior at export: simple images reconstruct well but land where no
  digit's code lies.

Each is a robust z-score (median and 1.4826 x MAD of the eval split), so neither dominates by
its units. The eval split's scores are kept, as quantiles, in the SavedModel: `percentile` is the
share of eval images scoring lower, and `is_anomaly` flags a score above the quantile chosen at
training (`--anomaly-quantile`, default 0.99).
"""
import dataclasses
from typing import List

import numpy as np
import tensorflow as tf

# The eval split's score distribution is kept as this many quantiles (and its minimum and
# maximum): enough for a percentile to the nearest 0.1%.
QUANTILES = 1001
MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation is 1.4826 x its MAD


@dataclasses.dataclass
class Calibration:
  """Constants of the score, fitted at export; numpy arrays, JSON-friendly via `to_dict`."""
  complexity_slope: float  # b, nats of loss per bit of PNG
  corrected_median: float
  corrected_scale: float
  latent_mean: List[float]
  latent_inverse_covariance: List[List[float]]
  distance_median: float
  distance_scale: float
  score_quantiles: List[float]  # QUANTILES values, from the eval split's minimum to its maximum
  anomaly_quantile: float
  threshold: float
  eval_count: int
  loss_median: float  # the eval split's (a two-sided typicality test's centre; not in the score)
  # The false-positive rate of `is_anomaly` on images the threshold never saw, estimated by
  # two-fold cross-fitting on the eval split (threshold from one half, rate on the other).
  held_out_false_positive_rate: float = float("nan")

  def to_dict(self):
    return dataclasses.asdict(self)


def complexity_bits(images):
  """float [N, H, W, C] in [0, 1] -> the length in bits of each image as PNG (8-bit pixels,
  zlib's default level), what a generic lossless compressor needs to store it."""
  pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
  return tf.map_fn(lambda image: tf.cast(tf.strings.length(tf.io.encode_png(image)), tf.float32)
                   * 8.0, pixels, fn_output_signature=tf.float32)


def latent_distance(z_mean, mean, inverse_covariance):
  """The squared Mahalanobis distance of each code from the training codes' Gaussian."""
  centred = z_mean - mean
  return tf.reduce_sum(tf.matmul(centred, inverse_covariance) * centred, axis=-1)


def _robust(values):
  median = float(np.median(values))
  scale = float(np.median(np.abs(values - median)) * MAD_TO_SIGMA)
  return median, max(scale, 1e-6)


def fit(train_codes, eval_loss, eval_bits, eval_codes, anomaly_quantile) -> Calibration:
  """The score's constants from the training codes and the eval split's loss, PNG bits and
  codes; numpy arrays in, a Calibration out."""
  train_codes = np.asarray(train_codes, np.float64)
  eval_loss, eval_bits = np.asarray(eval_loss, np.float64), np.asarray(eval_bits, np.float64)
  slope = float(np.polyfit(eval_bits, eval_loss, 1)[0]) if np.ptp(eval_bits) > 0 else 0.0
  corrected = eval_loss - slope * eval_bits
  mean = train_codes.mean(axis=0)
  # A little ridge keeps the inverse finite when a latent dimension went unused (collapsed).
  covariance = np.cov(train_codes, rowvar=False).reshape(len(mean), len(mean))
  inverse = np.linalg.inv(covariance + 1e-6 * np.eye(len(mean)))
  centred = np.asarray(eval_codes, np.float64) - mean
  distance = np.einsum("ij,jk,ik->i", centred, inverse, centred)
  calibration = Calibration(
      complexity_slope=slope, corrected_median=0.0, corrected_scale=1.0,
      latent_mean=mean.tolist(), latent_inverse_covariance=inverse.tolist(),
      distance_median=0.0, distance_scale=1.0, score_quantiles=[], anomaly_quantile=0.0,
      threshold=0.0, eval_count=len(eval_loss), loss_median=float(np.median(eval_loss)))
  calibration.corrected_median, calibration.corrected_scale = _robust(corrected)
  calibration.distance_median, calibration.distance_scale = _robust(distance)
  scores = combine(corrected, distance, calibration)
  calibration.score_quantiles = np.quantile(scores, np.linspace(0, 1, QUANTILES)).tolist()
  calibration.anomaly_quantile = float(anomaly_quantile)
  calibration.threshold = float(np.quantile(scores, anomaly_quantile))
  halves = np.array_split(np.random.default_rng(0).permutation(len(scores)), 2)
  if min(map(len, halves)) > 0:
    calibration.held_out_false_positive_rate = float(np.mean([
        np.mean(scores[other] > np.quantile(scores[one], anomaly_quantile))
        for one, other in (halves, halves[::-1])]))
  return calibration


def combine(corrected, distance, calibration):
  """The score from its two parts (numpy or TensorFlow): the larger robust z-score."""
  c = calibration
  first = (corrected - c.corrected_median) / c.corrected_scale
  second = (distance - c.distance_median) / c.distance_scale
  maximum = np.maximum if isinstance(first, np.ndarray) else tf.maximum
  return maximum(first, second)


def percentile(scores, quantiles):
  """The share of eval images scoring lower, from the stored quantiles (linear between them)."""
  quantiles = tf.constant(quantiles, tf.float32)
  levels = tf.linspace(0.0, 1.0, tf.size(quantiles))
  index = tf.clip_by_value(tf.searchsorted(quantiles, scores, side="right"), 1,
                           tf.size(quantiles) - 1)
  low, high = tf.gather(quantiles, index - 1), tf.gather(quantiles, index)
  share = tf.gather(levels, index - 1) + (tf.gather(levels, index) - tf.gather(levels, index - 1)) \
      * tf.clip_by_value((scores - low) / tf.maximum(high - low, 1e-12), 0.0, 1.0)
  return tf.where(scores < quantiles[0], 0.0, tf.where(scores >= quantiles[-1], 1.0, share))


# Where the pushed SavedModel keeps the calibration, readable without TensorFlow
# (TensorFlow Serving's own extras, e.g. warm-up requests, live beside it in assets.extra/).
CALIBRATION_FILE = ("assets.extra", "anomaly_calibration.json")


def calibrate(encode_and_losses, train_images, eval_images, anomaly_quantile) -> Calibration:
  """Fits the score on a trained model. `encode_and_losses(images)` -> (z mean, per-image loss),
  the deterministic pass the signatures serve; the image datasets yield float [B, H, W, C]
  batches (the Trainer's transformed train and eval splits), each read once."""
  codes = np.concatenate([encode_and_losses(batch)[0].numpy() for batch in train_images])
  eval_codes, eval_loss, eval_bits = [], [], []
  for batch in eval_images:
    mean, loss = encode_and_losses(batch)
    eval_codes.append(mean.numpy())
    eval_loss.append(loss.numpy())
    eval_bits.append(complexity_bits(batch).numpy())
  return fit(codes, np.concatenate(eval_loss), np.concatenate(eval_bits),
             np.concatenate(eval_codes), anomaly_quantile)


def score_outputs(images, z_mean, loss, calibration: Calibration):
  """The `score` signature's outputs for a batch, from its deterministic pass."""
  from vae_pipeline.models import features  # pylint: disable=import-outside-toplevel
  c = calibration
  bits = complexity_bits(images)
  distance = latent_distance(z_mean, tf.constant(c.latent_mean, tf.float32),
                             tf.constant(c.latent_inverse_covariance, tf.float32))
  score = combine(loss - c.complexity_slope * bits, distance, c)
  return {features.SCORE: score, features.LOSS: loss,
          features.PERCENTILE: percentile(score, c.score_quantiles),
          features.IS_ANOMALY: score > c.threshold,
          features.COMPLEXITY_BITS: bits, features.LATENT_DISTANCE: distance}
