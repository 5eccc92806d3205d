"""AnomaliesGate's executor on real ExampleAnomalies artifacts written as ExampleValidator does."""
import os

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from vae_pipeline.components.anomalies_gate import executor


def _anomalies_artifact(tmp_path, per_split):
  artifact = standard_artifacts.ExampleAnomalies()
  artifact.uri = str(tmp_path)
  artifact.split_names = artifact_utils.encode_split_names(list(per_split))
  for split, anomalies in per_split.items():
    split_dir = os.path.join(str(tmp_path), f"Split-{split}")
    os.makedirs(split_dir)
    with open(os.path.join(split_dir, executor.ANOMALIES_FILE), "wb") as f:
      f.write(anomalies.SerializeToString())
  return artifact


def test_clean_data_passes(tmp_path):
  artifact = _anomalies_artifact(tmp_path, {"train": anomalies_pb2.Anomalies(),
                                            "eval": anomalies_pb2.Anomalies()})
  assert executor.check_anomalies(artifact) == ["train", "eval"]


def test_anomalies_stop_the_run_with_every_problem_named(tmp_path):
  bad = anomalies_pb2.Anomalies()
  info = bad.anomaly_info["image"]
  info.short_description = "Column dropped"
  info.reason.add(description="The feature was present in fewer examples than expected.")
  bad.anomaly_info["label"].short_description = "Unexpected data type"
  artifact = _anomalies_artifact(tmp_path, {"train": anomalies_pb2.Anomalies(), "eval": bad})
  with pytest.raises(executor.DataAnomaliesError) as error:
    executor.check_anomalies(artifact)
  message = str(error.value)
  assert "split 'eval', feature 'image': Column dropped (The feature was present" in message
  assert "split 'eval', feature 'label': Unexpected data type" in message
  assert "train" not in message.split("\n")[1]
  assert str(tmp_path) in message
