"""Reads ExampleValidator's anomalies and fails with a readable report when there are any.

TFX records anomalies but does not stop the pipeline on them; training on data that violates
the schema would waste the run, or worse, bless a model trained on broken data.
"""
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils

# ExampleValidator writes one file per split under this name.
ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
  """The data violates its schema; the message lists every anomaly by split and feature."""


def load_anomalies(split_uri):
  anomalies = anomalies_pb2.Anomalies()
  anomalies.ParseFromString(io_utils.read_bytes_file(os.path.join(split_uri, ANOMALIES_FILE)))
  return anomalies


def describe(split, anomalies):
  """One line per anomaly: `split 'eval', feature 'image': short description (details)`."""
  lines = []
  for feature, info in sorted(anomalies.anomaly_info.items()):
    details = "; ".join(reason.description for reason in info.reason) or info.description
    lines.append(f"split '{split}', feature '{feature}': {info.short_description} ({details})")
  if anomalies.HasField("dataset_anomaly_info"):
    info = anomalies.dataset_anomaly_info
    details = "; ".join(reason.description for reason in info.reason) or info.description
    lines.append(f"split '{split}', whole dataset: {info.short_description} ({details})")
  return lines


def check_anomalies(anomalies_artifact):
  """Raises DataAnomaliesError naming every anomaly of every split; returns the splits checked."""
  splits = artifact_utils.decode_split_names(anomalies_artifact.split_names)
  problems = []
  for split in splits:
    split_uri = artifact_utils.get_split_uri([anomalies_artifact], split)
    problems += describe(split, load_anomalies(split_uri))
  if problems:
    raise DataAnomaliesError(
        "ExampleValidator found anomalies, so the run stops before training:\n  "
        + "\n  ".join(problems)
        + f"\nThe full report is in {anomalies_artifact.uri}")
  return splits
