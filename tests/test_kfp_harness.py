"""The test harness of tests/test_kubeflow_executed.py, checked on its own (fast: no task runs):
it must read resolver filters as written, answer them as KFP documents, substitute only the
placeholders it knows and refuse what it cannot do, rather than quietly do something else."""
import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from tests import kfp_harness as harness

BLESSING_FILTER = ('schema_title="tfx.ModelBlessing" AND state=LIVE AND '
                   'metadata.blessed.number_value=1')
MODEL_FILTER = ('schema_title="tfx.Model" AND state=LIVE AND '
                'name="{{$.inputs.artifacts[\'input\'].metadata[\'current_model_id\']}}"')


def test_filters_parse_as_compiled():
  assert harness.parse_filter(BLESSING_FILTER) == [
      ("schema_title", "=", "tfx.ModelBlessing"), ("state", "=", "LIVE"),
      ("metadata.blessed.number_value", "=", 1.0)]
  assert harness.parse_filter('in_context("other") AND uri!="gs://b/x y"') == [
      ("in_context", "=", "other"), ("uri", "!=", "gs://b/x y")]
  for bad in ('state=LIVE OR state=DELETED', 'state=LIVE AND', '(state=LIVE)', 'state'):
    with pytest.raises(harness.HarnessError, match="filter"):
      harness.parse_filter(bad)


def artifact(store, title, metadata=None, pipeline="p"):
  runtime = pb.RuntimeArtifact(name=store.new_name(), uri=f"/x/{title}",
                               type=pb.ArtifactTypeSchema(instance_schema=f"title: {title}\n"))
  json_format.ParseDict(metadata or {}, runtime.metadata)
  store.record(runtime, pipeline, "run", "task")
  return runtime.name


def test_store_answers_newest_first_in_the_pipeline_context(tmp_path):
  store = harness.ArtifactStore(str(tmp_path / "store.json"))
  older = artifact(store, "tfx.ModelBlessing", {"blessed": 1})
  artifact(store, "tfx.ModelBlessing", {"blessed": 0})
  newer = artifact(store, "tfx.ModelBlessing", {"blessed": 1})
  artifact(store, "tfx.ModelBlessing", {"blessed": 1}, pipeline="another")
  artifact(store, "tfx.ModelBlessing", {"blessed": "1"})  # a string is not a number_value
  found = store.query(BLESSING_FILTER, "p")
  assert [a["name"] for a in found] == [newer]  # limit: 1 by default
  assert [a["name"] for a in store.query(BLESSING_FILTER, "p", limit=5)] == [newer, older]
  # Kept across runs: a new store object on the same file finds the same.
  assert harness.ArtifactStore(str(tmp_path / "store.json")).query(BLESSING_FILTER, "p") == found
  with pytest.raises(harness.HarnessError, match="not one the harness knows"):
    store.query("display_name=\"x\"", "p")


def test_placeholders_known_and_unknown():
  executor_input = pb.ExecutorInput()
  executor_input.inputs.parameter_values["n"].number_value = 3
  executor_input.inputs.parameter_values["s"].string_value = "text"
  model = executor_input.inputs.artifacts["input"].artifacts.add(name="artifacts/7", uri="/m")
  json_format.ParseDict({"current_model_id": "artifacts/5"}, model.metadata)
  executor_input.outputs.output_file = "/out/executor_output.json"
  job = {"pipeline_job_name": "run-1"}
  assert json.loads(harness.substitute("{{$}}", executor_input, job)) == \
      json_format.MessageToDict(executor_input)
  assert harness.substitute(
      "{{$.inputs.parameters['n']}} {{$.inputs.parameters['s']}} {{$.outputs.output_file}} "
      "{{$.pipeline_job_name}}", executor_input, job) == \
      "3 text /out/executor_output.json run-1"
  assert harness.substitute(MODEL_FILTER, executor_input, job).endswith('name="artifacts/5"')
  with pytest.raises(harness.HarnessError, match="not one the harness knows"):
    harness.substitute("{{$.pipeline_secret}}", executor_input, job)


def test_localize_counts_each_string_and_prefers_the_longer(tmp_path):
  document = {"a": ["gs://b/root/serving/x", "gs://b/root"], "gs://b/root": 1}
  localized, counts = harness.localize(document, {"gs://b/root": "/r",
                                                  "gs://b/root/serving": "/s"})
  assert localized == {"a": ["/s/x", "/r"], "/r": 1}
  assert counts == {"gs://b/root": 2, "gs://b/root/serving": 1}


def testdependency_order_and_refusals():
  spec = json_format.ParseDict({"root": {"dag": {"tasks": {
      "b": {"taskInfo": {"name": "b"}, "dependentTasks": ["a"]},
      "c": {"taskInfo": {"name": "c"}, "inputs": {"artifacts": {"x": {
          "taskOutputArtifact": {"producerTask": "b", "outputArtifactKey": "y"}}}}},
      "a": {"taskInfo": {"name": "a"}}}}}}, pb.PipelineSpec())
  assert harness.dependency_order(spec.root.dag.tasks) == ["a", "b", "c"]
  spec.root.dag.tasks["a"].dependent_tasks.append("c")
  with pytest.raises(harness.HarnessError, match="cycle"):
    harness.dependency_order(spec.root.dag.tasks)
  with pytest.raises(json_format.ParseError):  # an unknown field in a compiled file
    harness.load_spec({"root": {"dag": {}}, "noSuchField": 1})


def test_exception_message_is_the_last_exception_with_every_line():
  stderr = ("I1130 log line\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
            "    raise X\nvae.Error: first line\n  second line\nThe end /path\n")
  assert harness.exception_message(stderr) == "vae.Error: first line\n  second line\nThe end /path"
  assert harness.exception_message("no traceback") == ""
