"""Evaluator (TFMA) configuration: mean per-image losses, no label needed, and the blessing rule.

TFMA's standard and Keras metrics need a label, `MeanPrediction` returns 0.0 without one, and
`tfma.metrics.Mean` leaves the model name out of its key, so candidate and baseline collide and
no change threshold can be checked. `MeanOutput` below is the small metric that does what we need.
"""
import json
import math
import sys
from typing import Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util

from vae_pipeline.models import features

CANDIDATE = "candidate"
BASELINE = "baseline"

# The largest finite float: a value threshold [-FINITE, FINITE] fails only NaN and infinities.
# TFMA checks `lower <= value <= upper` (evaluators/metrics_validator.py), false for NaN, and a
# failed threshold withholds the blessing; a metric without a threshold is never checked.
FINITE = sys.float_info.max


class MeanOutput(metric_types.Metric):
  """The mean over examples of one scalar-per-example output of the evaluated signature."""

  def __init__(self, prediction_key: str = features.LOSS, name: Optional[str] = None):
    # The keyword arguments round-trip through MetricConfig.config (JSON).
    super().__init__(metric_util.merge_per_key_computations(_mean_output_computations),
                     prediction_key=prediction_key, name=name or prediction_key)


def _mean_output_computations(prediction_key, name, model_name="", output_name="",
                              example_weighted=False):
  # Called once per model: a model name in the key is what lets TFMA compute the
  # candidate - baseline difference that change thresholds compare.
  key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                               example_weighted=example_weighted)
  # Ask for predictions only: the default preprocessor also demands labels.
  preprocessor = metric_types.StandardMetricInputsPreprocessor(
      include_filter={constants.PREDICTIONS_KEY: {}}, include_default_inputs=False)
  return [metric_types.MetricComputation(
      keys=[key], preprocessors=[preprocessor],
      combiner=_MeanCombiner(key, prediction_key))]


class _MeanCombiner(beam.CombineFn):
  """Accumulates [sum, count] in float64; extracts arrive one example at a time."""

  def __init__(self, key, prediction_key):
    self._key = key
    self._prediction_key = prediction_key

  def create_accumulator(self):
    return np.zeros(2, dtype=np.float64)

  def add_input(self, accumulator, element):
    predictions = element.get_predictions(self._key.model_name, self._key.output_name)
    if not isinstance(predictions, dict) or self._prediction_key not in predictions:
      available = list(predictions) if isinstance(predictions, dict) else type(predictions)
      raise ValueError(f"model {self._key.model_name!r} has no output "
                       f"{self._prediction_key!r}; it has {available}")
    value = np.asarray(predictions[self._prediction_key], dtype=np.float64)
    if value.size != 1:
      raise ValueError(f"output {self._prediction_key!r} must be one number per example, "
                       f"got shape {value.shape}")
    accumulator[0] += value.item()
    accumulator[1] += 1.0
    return accumulator

  def merge_accumulators(self, accumulators):
    return np.sum(list(accumulators), axis=0)

  def extract_output(self, accumulator):
    total, count = accumulator
    return {self._key: float(total / count) if count else float("nan")}


def eval_config(loss_upper_bound: float, max_loss_increase: float) -> tfma.EvalConfig:
  """Means of the per-image losses and bounds, overall and per label (when examples have one).

  Bless when the overall `loss` <= the bound and <= the baseline's + margin, and every overall
  mean of the candidate (the losses and the likelihood bounds) is a finite number: a diverged
  model whose loss is huge but finite may have NaN bounds, and a loose --max-loss must not let it
  through. Per-label numbers are reported, not gated. The TFX Evaluator drops the change
  threshold when there is no blessed model yet.
  """

  def model_spec(name, signature, is_baseline=False):
    # TF_GENERIC: load as a plain SavedModel (not as a Keras model with label-based metrics).
    return tfma.ModelSpec(name=name, signature_name=signature, model_type=tfma.TF_GENERIC,
                          is_baseline=is_baseline)

  overall = tfma.SlicingSpec()
  # A threshold given as `threshold` would apply to every slice, so each label would need to
  # pass the bound and not get worse; the blessing is about the whole eval split.
  # The bound's own value threshold also fails NaN and infinities (even for --max-loss inf).
  loss_threshold = tfma.PerSliceMetricThreshold(
      slicing_specs=[overall],
      threshold=tfma.MetricThreshold(
          value_threshold=tfma.GenericValueThreshold(
              lower_bound={"value": -FINITE},
              upper_bound={"value": min(loss_upper_bound, FINITE)}),
          change_threshold=tfma.GenericChangeThreshold(
              direction=tfma.MetricDirection.LOWER_IS_BETTER,
              absolute={"value": max_loss_increase})))
  finite = tfma.PerSliceMetricThreshold(
      slicing_specs=[overall],
      threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
          lower_bound={"value": -FINITE}, upper_bound={"value": FINITE})))

  def mean_of(output):
    return tfma.MetricConfig(
        class_name=MeanOutput.__name__, module=__name__,
        config=json.dumps({"prediction_key": output, "name": output}),
        per_slice_thresholds=[loss_threshold if output == features.LOSS else finite])

  compared = (features.RECONSTRUCTION_LOSS, features.KL_LOSS, features.LOSS)
  return tfma.EvalConfig(
      # The bounds cost 64 decoder passes per image: computed for the candidate only (the
      # baseline's serving signature has the losses the blessing compares).
      model_specs=[model_spec(CANDIDATE, features.EVALUATION_SIGNATURE),
                   model_spec(BASELINE, features.SERVING_SIGNATURE, is_baseline=True)],
      # Unlabelled examples simply fall in no label slice.
      slicing_specs=[overall, tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])],
      metrics_specs=[
          tfma.MetricsSpec(
              model_names=[CANDIDATE, BASELINE],
              metrics=[tfma.MetricConfig(class_name="ExampleCount")] + [
                  mean_of(output) for output in compared]),
          tfma.MetricsSpec(
              model_names=[CANDIDATE],
              metrics=[mean_of(output) for output in features.LOSS_OUTPUTS
                       if output not in compared]),
      ],
      options=tfma.Options(include_default_metrics={"value": False}))


def read_evaluation(evaluation_uri):
  """(candidate metrics, baseline metrics, candidate metrics per label, validation ok,
  failures) from the Evaluator's output."""
  candidate, baseline, per_label = {}, {}, {}
  for metrics in tfma.load_metrics(evaluation_uri):
    keys = metrics.slice_key.single_slice_keys
    if keys and keys[0].column != features.LABEL_KEY:
      continue
    for kv in metrics.metric_keys_and_values:
      if kv.key.is_diff:
        continue
      if kv.key.model_name == BASELINE:
        target = None if keys else baseline
      elif keys:
        target = per_label.setdefault(str(keys[0].int64_value), {})
      else:
        target = candidate
      if target is not None:
        target[kv.key.name] = kv.value.double_value.value
  validation = tfma.load_validation_result(evaluation_uri)
  failures = [failure for per_slice in validation.metric_validations_per_slice
              for failure in per_slice.failures]
  per_label = dict(sorted(per_label.items(), key=lambda item: int(item[0])))
  return candidate, baseline, per_label, validation.validation_ok, failures


def explain_failure(failure, metrics, baseline_metrics):
  """TFMA's failure messages are often empty: say which threshold failed, with the numbers."""
  name = failure.metric_key.name
  value = metrics.get(name, float("nan"))
  if name in metrics and not math.isfinite(value):
    return (f"{name} is {value} (not a finite number): the model diverged or is broken; a "
            "model with a NaN or infinite metric is never blessed")
  if failure.metric_key.is_diff:
    base = baseline_metrics.get(name, float("nan"))
    text = (f"{name} {value:.2f} is {value - base:+.2f} vs the latest blessed model's "
            f"{base:.2f}; allowed: {failure.metric_threshold.change_threshold.absolute.value:+.2f}")
  else:
    text = (f"{name} {value:.2f} is above the bound "
            f"{failure.metric_threshold.value_threshold.upper_bound.value:.2f}")
  return f"{text} {failure.message}".strip()
