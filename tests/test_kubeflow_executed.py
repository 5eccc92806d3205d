"""The compiled Kubeflow pipeline, executed: every task of pipeline.yaml (and of pipeline_job.json)
run through the container entry point it names, by tests/kfp_harness.py (a test harness that
builds each task's ExecutorInput the way KFP's driver / Vertex AI would, runs the task's exact
command and args in this venv, reads back its ExecutorOutput and answers the resolver's ML
Metadata queries from an artifact store kept across runs).

The pipeline is compiled as `vae-pipeline compile` compiles it, with gs:// URIs; then exactly
these strings are rewritten to local folders (`kfp_harness.localize`), and nothing else:
  * the data root, gs://kfp-harness/data: the `data-root` parameter's default (pipeline.yaml:
    root.inputDefinitions; pipeline_job.json: that and runtimeConfig.parameterValues);
  * the serving dir, gs://kfp-harness/serving: the Pusher's push_destination;
  * the pipeline root, gs://kfp-harness/root: pipeline_job.json's runtimeConfig.gcsOutputDirectory
    (pipeline.yaml has none: KFP takes the root when the run is created; the harness is given
    the local folder the same way);
  * the curated schema, gs://kfp-harness/schema/schema.pbtxt (the anomalies run only).

Run 1 (pipeline.yaml, the default data root): every task, ExampleGen through its driver, a model
blessed and pushed. Run 2 (pipeline_job.json, `data-root` given for the run): ExampleGen reads
the other data; its Evaluator's baseline is run 1's blessed model, found by the resolver's
queries. A third pipeline, compiled with a curated schema the data violates, stops at
AnomaliesGate with the message a local run gives.
"""
import dataclasses
import glob
import hashlib
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tests import kfp_harness
from vae_pipeline import kubeflow_runner as kfp_lib

pytestmark = pytest.mark.e2e

CLOUD_ROOT = "gs://kfp-harness/root"
CLOUD_DATA = "gs://kfp-harness/data"
CLOUD_SERVING = "gs://kfp-harness/serving"
CLOUD_SCHEMA = "gs://kfp-harness/schema/schema.pbtxt"
NUM_IMAGES = 200
# A short training: the tests are about the orchestration, not the model. The loss bound is
# loose so that run 1's model is blessed whatever one epoch gives.
SETTINGS = dict(epochs=1, batch_size=32, latent_dim=2, max_loss=1000.0)
DATA_PATTERN = "span-{SPAN}/*"  # each run reads the newest span folder (ExampleGen's driver)
ENTRY_POINT = ["-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
DRIVER = ["-m", "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"]
BLESSING_RESOLVER = "latest_blessed_model_resolver-model-blessing-resolver"
MODEL_RESOLVER = "latest_blessed_model_resolver-model-resolver"
# Found bug: the custom artifact type `vae_pipeline.RunReport` is not importable in a container.


@dataclasses.dataclass
class Folders:
  base: str
  data_1: str  # span-1: digits 0-199
  data_2: str  # span-1: digits 400-599, span-2: digits 200-399 (the newest: what run 2 reads)
  root: str  # the pipeline root of runs 1 and 2 (and the harness's artifact store)
  serving: str


def write_pngs(folder, images):
  os.makedirs(folder)
  for i, image in enumerate(images):
    Image.fromarray(image[..., 0]).save(os.path.join(folder, f"digit{i:03d}.png"))


def pixel_digest(image) -> str:
  return hashlib.sha1(np.asarray(image, np.uint8).reshape(28, 28).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits):
  base = str(tmp_path_factory.mktemp("kfp-executed"))
  found = Folders(base=base, data_1=os.path.join(base, "data-1"),
                  data_2=os.path.join(base, "data-2"), root=os.path.join(base, "root"),
                  serving=os.path.join(base, "serving"))
  images = digits[0]
  write_pngs(os.path.join(found.data_1, "span-1"), images[:NUM_IMAGES])
  write_pngs(os.path.join(found.data_2, "span-1"), images[2 * NUM_IMAGES:3 * NUM_IMAGES])
  write_pngs(os.path.join(found.data_2, "span-2"), images[NUM_IMAGES:2 * NUM_IMAGES])
  return found


def compile_for_cluster(output_dir, schema=None):
  """What `vae-pipeline compile --pipeline-root gs://... --data gs://... --serving-dir gs://...
  --data-pattern 'span-{SPAN}/*' --image-shape 28x28x1 --epochs 1 ...` writes."""
  config = kfp_lib.cluster_config(CLOUD_ROOT, CLOUD_DATA, (28, 28, 1), serving_dir=CLOUD_SERVING,
                                  data_pattern=DATA_PATTERN, schema=schema, **SETTINGS)
  return kfp_lib.compile_pipeline(config, output_dir)


@pytest.fixture(scope="module")
def compiled(folders):
  return compile_for_cluster(os.path.join(folders.base, "compiled"))


def rewrites(folders, **extra):
  return {CLOUD_ROOT: folders.root, CLOUD_DATA: folders.data_1, CLOUD_SERVING: folders.serving,
          **extra}


@pytest.fixture(scope="module")
def executor():
  # The least of the driver hook's contract: the driver's span and resolved pattern reach the
  # executor only through the output metadata file (see LocalKfpExecutor).
  return kfp_harness.LocalKfpExecutor(driver_updates="artifacts")


@pytest.fixture(scope="module")
def run1(compiled, folders, executor):
  with open(compiled["spec"]) as f:
    spec, counts = kfp_harness.localize(yaml.safe_load(f), rewrites(folders))
  # Where each cloud string is in pipeline.yaml: the data root's default and the Pusher's target.
  assert counts == {CLOUD_ROOT: 0, CLOUD_DATA: 1, CLOUD_SERVING: 1}
  return executor.run_pipeline_spec(spec, folders.root)  # `data-root`: its default


@pytest.fixture(scope="module")
def run2(run1, compiled, folders, executor):
  with open(compiled["job"]) as f:
    job, counts = kfp_harness.localize(json.load(f), rewrites(folders))
  assert counts == {CLOUD_ROOT: 1, CLOUD_DATA: 2, CLOUD_SERVING: 1}
  # `vae-pipeline submit --vertex --param data-root=...`: the job's parameter values, replaced.
  return executor.run_pipeline_job(job, parameters={kfp_lib.DATA_ROOT_PARAMETER: folders.data_2})


def container_tasks(spec):
  executors = spec["deploymentSpec"]["executors"]
  return {name: executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
          for name, task in spec["root"]["dag"]["tasks"].items()}


def explain(run):
  failed = run.failed
  return f"{failed.name}: {failed.error}\n(log: {failed.log})" if failed else ""


# ----------------------------------------------------------------------------- run 1

def test_run1_runs_every_task_with_the_command_the_spec_names(run1, compiled):
  with open(compiled["spec"]) as f:
    spec = yaml.safe_load(f)
  executors = container_tasks(spec)
  assert set(run1.tasks) == set(executors)
  states = run1.states()
  assert all(state == "SUCCEEDED" for name, state in states.items() if name != "RunReport"), \
      explain(run1)
  for name, executor in executors.items():
    task = run1.tasks[name]
    if "resolver" in executor:
      assert task.kind == "resolver" and not task.commands
      continue
    container = executor["container"]
    # Its exact command and args: `python` is this venv's interpreter, `{{$}}` its ExecutorInput.
    argv = task.commands[-1]
    assert argv[0] == sys.executable and argv[1:len(container["command"])] == ENTRY_POINT
    args = argv[len(container["command"]):]
    assert len(args) == len(container["args"])
    for given, written in zip(args, container["args"]):
      if written == "{{$}}":
        assert json.loads(given) == task.executor_input
      else:
        assert given == written
    assert len(task.commands) == (2 if "lifecycle" in container else 1)


def test_run1_example_gen_runs_its_driver_first_and_reads_the_newest_span(run1, folders):
  example_gen = run1.tasks["ExampleGen"]
  assert example_gen.commands[0][1:3] == DRIVER  # the pre-cache check, before the executor
  driver = example_gen.driver_output["parameterValues"]
  assert driver["span"] == 1
  assert json.loads(driver["input_config"])["splits"][0]["pattern"] == "span-1/*"
  assert f"num_files:{NUM_IMAGES}," in driver["input_fingerprint"]
  # The default of `data-root` (the rewritten --data) reached the executor.
  inputs = example_gen.executor_input["inputs"]["parameterValues"]
  assert inputs["input_base"] == folders.data_1
  examples = example_gen.artifact("examples")["metadata"]
  assert examples["input_count"] == NUM_IMAGES and examples["bad_input_count"] == 0
  assert examples["custom:span"] == 1
  assert json.loads(examples["split_names"]) == ["train", "eval"]


def test_run1_blesses_and_pushes_its_model(run1, folders):
  trainer_model = run1.tasks["Trainer"].artifact("model")
  evaluator = run1.tasks["Evaluator"]
  # No earlier blessed model: the resolvers find nothing, the Evaluator gets no baseline.
  assert run1.tasks[BLESSING_RESOLVER].outputs == {"model_blessing": []}
  assert run1.tasks[MODEL_RESOLVER].outputs == {"model": []}
  assert evaluator.executor_input["inputs"]["artifacts"].get("baseline_model", {}) == {}
  blessing = evaluator.artifact("blessing")["metadata"]
  assert blessing["blessed"] == 1
  assert blessing["current_model_id"] == trainer_model["name"]  # what the resolver will query
  pushed = run1.tasks["Pusher"].artifact("pushed_model")["metadata"]
  assert pushed["pushed"] == 1
  assert os.path.dirname(pushed["pushed_destination"]) == folders.serving
  assert os.listdir(folders.serving) == [os.path.basename(pushed["pushed_destination"])]
  assert os.path.isfile(os.path.join(pushed["pushed_destination"], "saved_model.pb"))


def test_run1_run_report_writes_the_page(run1):
  """It failed on every cluster run: TFX's entry point imports the report's artifact type by
  its schema title, `vae_pipeline.RunReport` (pipeline/__init__.py)."""
  report = run1.tasks["RunReport"]
  assert report.state == "SUCCEEDED", report.error
  folder = report.artifact("report")["uri"]
  assert os.path.isfile(os.path.join(folder, "index.html"))
  with open(os.path.join(folder, "index.html")) as f:
    assert "Run -" not in f.read()  # the run is named on a cluster too


# ----------------------------------------------------------------------------- run 2

def test_run2_goes_through_the_pipeline_job(run2, folders):
  assert run2.pipeline_root == folders.root  # the job's gcsOutputDirectory, rewritten
  assert run2.parameters == {kfp_lib.DATA_ROOT_PARAMETER: folders.data_2}
  states = run2.states()
  assert all(state == "SUCCEEDED" for name, state in states.items() if name != "RunReport"), \
      explain(run2)


def test_run2_example_gen_reads_the_data_root_given_for_the_run(run1, run2, folders, digits):
  example_gen = run2.tasks["ExampleGen"]
  assert example_gen.executor_input["inputs"]["parameterValues"]["input_base"] == folders.data_2
  driver = example_gen.driver_output["parameterValues"]
  assert driver["span"] == 2  # the newest span of the other data root
  assert driver["input_fingerprint"] != \
      run1.tasks["ExampleGen"].driver_output["parameterValues"]["input_fingerprint"]
  # The examples are span 2's images: digits 200-399, none of run 1's.
  uri = example_gen.artifact("examples")["uri"]
  records = tf.data.TFRecordDataset(glob.glob(os.path.join(uri, "Split-*", "*")),
                                    compression_type="GZIP")
  read = set()
  for record in records:
    example = tf.train.Example.FromString(record.numpy())
    png = example.features.feature["image"].bytes_list.value[0]
    read.add(pixel_digest(tf.io.decode_png(png, channels=1).numpy()))
  images = digits[0]
  assert read == {pixel_digest(image) for image in images[NUM_IMAGES:2 * NUM_IMAGES]}


def test_run2_evaluator_compares_with_run1_blessed_model(run1, run2):
  run1_model = run1.tasks["Trainer"].artifact("model")
  run1_blessing = run1.tasks["Evaluator"].artifact("blessing")
  # The resolver's two queries, as compiled: the latest blessing, then the model it names.
  assert run2.tasks[BLESSING_RESOLVER].artifact("model_blessing")["name"] == run1_blessing["name"]
  assert run2.tasks[MODEL_RESOLVER].artifact("model")["name"] == run1_model["name"]
  evaluator = run2.tasks["Evaluator"]
  baseline = evaluator.executor_input["inputs"]["artifacts"]["baseline_model"]["artifacts"]
  assert [b["uri"] for b in baseline] == [run1_model["uri"]]
  blessing = evaluator.artifact("blessing")["metadata"]
  assert blessing["baseline_model_id"] == run1_model["name"]
  assert blessing["current_model_id"] == run2.tasks["Trainer"].artifact("model")["name"]
  # The baseline was evaluated: its metrics are in the evaluation, beside the candidate's.
  from vae_pipeline.models import evaluation as evaluation_lib
  metrics, baseline_metrics, *_ = evaluation_lib.read_evaluation(
      evaluator.artifact("evaluation")["uri"])
  assert "loss" in metrics and "loss" in baseline_metrics


# ----------------------------------------------------------------------------- anomalies

@pytest.fixture(scope="module")
def curated_schema(run1, folders):
  """Run 1's inferred schema plus a required label, which these unlabeled PNGs violate."""
  schema_uri = run1.tasks["SchemaGen"].artifact("schema")["uri"]
  with open(os.path.join(schema_uri, "schema.pbtxt")) as f:
    text = f.read()
  text += textwrap.dedent("""
      feature {
        name: "label"
        type: INT
        presence { min_fraction: 1.0 min_count: 1 }
        shape { dim { size: 1 } }
      }
      """)
  path = os.path.join(folders.base, "curated", "schema.pbtxt")
  os.makedirs(os.path.dirname(path))
  with open(path, "w") as f:
    f.write(text)
  return path


@pytest.fixture(scope="module")
def anomalies_run(curated_schema, folders, executor):
  paths = compile_for_cluster(os.path.join(folders.base, "compiled-curated"), schema=CLOUD_SCHEMA)
  root = os.path.join(folders.base, "root-curated")
  with open(paths["spec"]) as f:
    spec, counts = kfp_harness.localize(
        yaml.safe_load(f), rewrites(folders, **{CLOUD_SCHEMA: curated_schema}))
  assert counts[CLOUD_SCHEMA] == 1  # ImportSchemaGen's schema_file
  return executor.run_pipeline_spec(spec, root)


def local_anomalies_message(folders, curated_schema, output_dir):
  from vae_pipeline import local_runner
  from vae_pipeline.components.anomalies_gate.executor import DataAnomaliesError
  from vae_pipeline.config import PipelineConfig
  config = PipelineConfig(data=folders.data_1, output_dir=output_dir, schema=curated_schema,
                          **SETTINGS)
  with pytest.raises(DataAnomaliesError) as raised:
    local_runner.run(config, show_progress=False)
  return str(raised.value)


def test_anomalies_stop_the_run_at_the_gate_with_the_local_message(anomalies_run, folders,
                                                                    curated_schema, tmp_path):
  states = anomalies_run.states()
  assert states["AnomaliesGate"] == "FAILED", explain(anomalies_run)
  for upstream in ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator"):
    assert states[upstream] == "SUCCEEDED"
  for downstream in ("Transform", "Trainer", "Evaluator", "Pusher", "RunReport"):
    assert states[downstream] == "NOT_RUN"
  error = anomalies_run.tasks["AnomaliesGate"].error
  kind, _, message = error.partition(": ")
  assert kind.endswith(".DataAnomaliesError"), error
  local = local_anomalies_message(folders, curated_schema, str(tmp_path / "local"))
  assert "feature 'label'" in local
  # The same message but for the last line, which names each run's own anomalies folder.
  *lines, where = message.splitlines()
  *local_lines, local_where = local.splitlines()
  assert lines == local_lines
  anomalies_uri = anomalies_run.tasks["ExampleValidator"].artifact("anomalies")["uri"]
  assert where == f"The full report is in {anomalies_uri}"
  assert local_where.startswith("The full report is in ")
