"""The record of a run: what it read, how its model did, whether it was blessed and where it was
pushed, read from the artifacts the run wrote. The run report (executor.py) and the printed
summary and `vae-pipeline runs` (vae_pipeline.summary) show this one record, read by `read`: the
report from its input artifacts, the summary from the artifacts ML Metadata lists for the run.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.utils import path_utils

from vae_pipeline.components.image_example_gen import executor as image_example_gen
from vae_pipeline.models import evaluation as evaluation_lib


@dataclasses.dataclass
class Output:
  """An artifact as the record reads it: its folder and its properties (custom ones included)."""
  uri: str
  properties: Dict[str, object] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, artifact) -> "Output":
    """From a TFX artifact (an executor's input). On Kubeflow, TFX's entry point hands custom
    properties over as JSON values (an int arrives as a float): they are decoded as such."""
    mlmd = artifact.mlmd_artifact
    properties = {name: value(v) for name, v in mlmd.properties.items()}
    for name, proto in mlmd.custom_properties.items():
      decoded = artifact.get_json_value_custom_property(name)
      properties[name] = decoded if decoded is not None else value(proto)
    return cls(artifact.uri, properties)


def value(proto: metadata_store_pb2.Value):
  """An ML Metadata property's value: int, float or str (others as their text)."""
  kind = proto.WhichOneof("value")
  return getattr(proto, kind) if kind in ("int_value", "double_value", "string_value") else str(
      proto)


@dataclasses.dataclass
class RunRecord:
  run_id: str
  inputs: Optional[int] = None  # items the source held
  bad_inputs: Optional[int] = None  # of which skipped as unreadable (listed in bad_inputs_file)
  bad_inputs_file: Optional[str] = None
  span: Optional[int] = None
  label_names: Optional[List[str]] = None  # class sub-folders, in label id order
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)  # candidate, nats/image
  baseline_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  # Candidate metrics per label value (when the examples have labels): label -> name -> value.
  label_metrics: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
  blessed: Optional[bool] = None  # None: not evaluated
  blessing_reasons: List[str] = dataclasses.field(default_factory=list)
  model_dir: Optional[str] = None  # the candidate SavedModel
  pushed_dir: Optional[str] = None


def read(run_id, examples: Optional[Output] = None, model: Optional[Output] = None,
         evaluation: Optional[Output] = None, pushed_model: Optional[Output] = None) -> RunRecord:
  """The record of a run from the outputs it has (a run that stopped early has fewer)."""
  record = RunRecord(run_id=run_id)
  if examples is not None:
    props = examples.properties
    record.inputs = _count(props.get(image_example_gen.INPUT_COUNT))
    record.bad_inputs = _count(props.get(image_example_gen.BAD_INPUT_COUNT))
    record.bad_inputs_file = os.path.join(examples.uri, image_example_gen.BAD_INPUTS_FILE)
    record.span = _count(props.get("span"))
    if props.get(image_example_gen.LABEL_NAMES):
      record.label_names = json.loads(props[image_example_gen.LABEL_NAMES])
  if model is not None:
    record.model_dir = path_utils.serving_model_dir(model.uri)  # the Trainer's SavedModel
  if evaluation is not None:
    (record.metrics, record.baseline_metrics, record.label_metrics, record.blessed,
     failures) = evaluation_lib.read_evaluation(evaluation.uri)
    # Two thresholds may fail for one cause (a NaN loss fails the bound and the change): once.
    record.blessing_reasons = list(dict.fromkeys(
        evaluation_lib.explain_failure(f, record.metrics, record.baseline_metrics)
        for f in failures))
  if pushed_model is not None and pushed_model.properties.get("pushed") == 1:
    record.pushed_dir = pushed_model.properties.get("pushed_destination")
  return record


def _count(number) -> Optional[int]:
  """A count property as an int (a JSON value, on Kubeflow, is a float), or None."""
  return None if number is None else int(number)
