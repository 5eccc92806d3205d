"""Running locally beyond the basics: one run per ML Metadata store (the lock), Beam presets
(DirectRunner multi-processing end to end), and the tf.distribute strategy the Trainer picks."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from vae_pipeline import config as config_lib
from vae_pipeline import local_runner
from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import distribute

CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")


def test_a_second_run_on_the_same_store_exits_with_a_clear_message(tmp_path):
  config = PipelineConfig(output_dir=str(tmp_path))
  with local_runner.store_lock(config.metadata_path):
    started = time.monotonic()
    result = subprocess.run([CLI, "run", "--output-dir", str(tmp_path), "--wait", "2"],
                            capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"another run is using {config.metadata_path} (pid {os.getpid()}" in result.stderr
  # It waited already: the message does not suggest --wait again.
  assert "still after waiting 2 s; let it finish, or use another --output-dir" in result.stderr
  assert "--wait" not in result.stderr and "Traceback" not in result.stderr
  assert time.monotonic() - started >= 2  # it did wait
  assert not os.path.exists(config.pipeline_root)  # nothing ran


def test_the_lock_waits_for_the_holder_and_is_never_left_stale(tmp_path):
  path = str(tmp_path / "store" / "metadata.sqlite")
  released = threading.Event()

  def hold():
    with local_runner.store_lock(path):
      time.sleep(1.0)
    released.set()

  holder = threading.Thread(target=hold)
  holder.start()
  time.sleep(0.2)
  with pytest.raises(local_runner.StoreBusyError):
    with local_runner.store_lock(path):
      pass
  with local_runner.store_lock(path, wait_seconds=30):
    assert released.is_set()  # got it once the holder let go
  holder.join()
  # A killed holder's lock goes with it.
  killed = subprocess.Popen([sys.executable, "-c", (
      "import time; from vae_pipeline import local_runner\n"
      f"with local_runner.store_lock({path!r}):\n  print('held', flush=True); time.sleep(60)")],
      stdout=subprocess.PIPE, text=True)
  assert killed.stdout.readline().strip() == "held"
  killed.kill()
  killed.wait()
  with local_runner.store_lock(path):
    pass




def test_beam_presets_merge_and_name_what_they_need():
  assert config_lib.beam_preset_args() == ["--direct_running_mode=in_memory",
                                           "--direct_num_workers=1"]
  assert config_lib.beam_preset_args("multi-processing", ["--direct_num_workers=8"]) == [
      "--direct_running_mode=multi_processing", "--direct_num_workers=8"]
  with pytest.raises(ValueError, match="--beam-arg=--project=VALUE.*--beam-arg=--region=VALUE"):
    config_lib.beam_preset_args("dataflow", ["--temp_location=gs://b/tmp",
                                             "--sdk_container_image=img"])
  dataflow = config_lib.beam_preset_args("dataflow", [
      "--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp",
      "--sdk_container_image=europe-docker.pkg.dev/p/ml/vae-pipeline:0.1.0"])
  assert "--runner=DataflowRunner" in dataflow and "--project=p" in dataflow
  for preset in ("flink", "spark"):
    args = config_lib.beam_preset_args(preset, ["--job_endpoint=localhost:8099",
                                                "--environment_config=img"])
    assert "--runner=PortableRunner" in args
  with pytest.raises(ValueError, match="unknown Beam preset"):
    config_lib.beam_preset_args("local")


def test_direct_runner_pipelines_skip_the_tfx_sdist_and_other_runners_keep_it(monkeypatch):
  """TFX builds an sdist of itself for every Beam component, for remote workers (1.9 s each, and
  ~50 MB left in the temp folder): not for DirectRunner (pipeline/beam_local.py)."""
  from tfx.components.statistics_gen import executor as statistics_gen
  from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
  from tfx.utils import dependency_utils
  from vae_pipeline import beam_local
  built = []
  monkeypatch.setattr(dependency_utils, "build_ephemeral_package",
                      lambda: built.append(1) or "/tmp/x/tfx_ephemeral-1.16.0.tar.gz")
  beam_local.skip_worker_packages_for_direct_runner()
  beam_local.skip_worker_packages_for_direct_runner()  # a second call changes nothing
  executor = lambda args: statistics_gen.Executor(BaseBeamExecutor.Context(beam_pipeline_args=args))
  for preset in ("in-process", "multi-processing"):
    args = config_lib.beam_preset_args(preset)
    assert executor(args)._beam_pipeline_args[:len(args)] == args
  assert not built
  remote = executor(config_lib.beam_preset_args("flink", ["--job_endpoint=localhost:8099",
                                                          "--environment_config=img"]))
  assert "--extra_package=/tmp/x/tfx_ephemeral-1.16.0.tar.gz" in remote._beam_pipeline_args
  assert built == [1]


@pytest.mark.e2e
def test_the_whole_pipeline_with_direct_runner_multi_processing(tmp_path, digits):
  """Every Beam-based component (ExampleGen, StatisticsGen, Transform, Evaluator) with a worker
  process per core: the run completes and ingests every image, as in-process."""
  import glob
  import tensorflow as tf
  from PIL import Image
  from tests import image_files as files
  for i in range(0, 120 * 41, 41):  # spread out: the bundled digits are sorted by label
    folder = tmp_path / "data" / str(int(digits[1][i]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{i}.png").write_bytes(files.encode(Image.fromarray(digits[0][i, ..., 0])))
  config = PipelineConfig(data=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), epochs=1,
                          batch_size=32, latent_dim=2, max_loss=1000.0,
                          beam_args=config_lib.beam_preset_args("multi-processing"))
  sdists = lambda: set(glob.glob(os.path.join(tempfile.gettempdir(), "*", "build", "tfx")))
  before = sdists()
  summary = local_runner.run(config, show_progress=False)
  assert {c.state for c in summary.components} == {"COMPLETE"}
  assert sdists() == before  # no TFX sdist built for the workers (pipeline/beam_local.py)
  records = glob.glob(os.path.join(summary.component("ExampleGen").outputs["examples"][0],
                                   "Split-*", "*"))
  assert sum(1 for _ in tf.data.TFRecordDataset(records, compression_type="GZIP")) == 120
  assert summary.inputs == 120 and summary.label_names == [str(d) for d in range(10)]
  assert summary.metrics["example_count"] > 0 and summary.pushed_dir


def test_strategy_is_chosen_from_the_environment():
  workers = json.dumps({"cluster": {"worker": ["w0:2222", "w1:2222"]},
                        "task": {"type": "worker", "index": 1}})
  chief = json.dumps({"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"]},
                      "task": {"type": "chief", "index": 0}})
  one = json.dumps({"cluster": {"worker": ["w0:2222"]}, "task": {"type": "worker", "index": 0}})
  assert distribute.strategy_name(workers, gpus=0) == distribute.MULTI_WORKER
  assert distribute.strategy_name(chief, gpus=1) == distribute.MULTI_WORKER
  assert distribute.strategy_name(one, gpus=0) == distribute.DEFAULT
  assert distribute.strategy_name("", gpus=4) == distribute.MIRRORED
  assert distribute.strategy_name("", gpus=1) == distribute.DEFAULT
  assert distribute.is_chief(chief) and distribute.is_chief("") and distribute.is_chief(one)
  assert not distribute.is_chief(workers)
  # This machine: no TF_CONFIG, no GPU -> the default strategy, one replica.
  assert "TF_CONFIG" not in os.environ
  assert distribute.strategy().num_replicas_in_sync == 1


def test_span_window_keeps_the_newest_ingestion_of_each_of_the_newest_spans():
  from tfx.types import standard_artifacts
  from vae_pipeline.resolvers import LatestSpansStrategy

  def examples(artifact_id, span=None, version=0):
    artifact = standard_artifacts.Examples()
    artifact.id = artifact_id
    if span is not None:  # Transform's output (also Examples) has no span
      artifact.set_int_custom_property("span", span)
      artifact.set_int_custom_property("version", version)
    return artifact

  given = [examples(1, 1), examples(2), examples(3, 2), examples(4, 3), examples(5, 2),
           examples(6, 3, version=1), examples(7, 3, version=0)]
  resolved = LatestSpansStrategy(num_spans=2).resolve_artifacts(None, {"examples": given})
  # Span 3: version 1 beats the later-id version 0; span 2: the later ingestion (id 5).
  assert [a.id for a in resolved["examples"]] == [6, 5]
  assert [a.id for a in LatestSpansStrategy(num_spans=5).resolve_artifacts(
      None, {"examples": given})["examples"]] == [6, 5, 1]
  assert LatestSpansStrategy(num_spans=1).resolve_artifacts(None, {"examples": [examples(2)]}) \
      is None


def test_the_baseline_is_the_latest_blessed_model_other_than_the_candidate():
  from tfx.types import standard_artifacts
  from vae_pipeline.resolvers import LatestOtherBlessedModelStrategy

  def model(artifact_id):
    artifact = standard_artifacts.Model()
    artifact.id = artifact_id
    return artifact

  def blessing(model_id, blessed):
    artifact = standard_artifacts.ModelBlessing()
    artifact.set_int_custom_property("current_model_id", model_id)
    artifact.set_int_custom_property("blessed", int(blessed))
    return artifact

  models = [model(1), model(2), model(3)]
  blessings = [blessing(1, True), blessing(2, True), blessing(3, False)]
  resolve = lambda candidate: LatestOtherBlessedModelStrategy().resolve_artifacts(
      None, {"model": models, "model_blessing": blessings, "candidate": [model(candidate)]})
  assert [a.id for a in resolve(3)["model"]] == [2]  # 3 was not blessed; 2 is the latest that was
  assert [a.id for a in resolve(2)["model"]] == [1]  # never the candidate itself
  assert resolve(1)["model"][0].id == 2  # an older candidate (cached) against a newer blessing
  only_itself = LatestOtherBlessedModelStrategy().resolve_artifacts(
      None, {"model": [model(1)], "model_blessing": [blessing(1, True)],
             "candidate": [model(1)]})
  assert only_itself["model"] == only_itself["model_blessing"] == []
  # Airflow's launcher hands every model the Trainer made: the newest is this run's.
  every_model = LatestOtherBlessedModelStrategy().resolve_artifacts(
      None, {"model": models, "model_blessing": blessings, "candidate": models})
  assert [a.id for a in every_model["model"]] == [2]
  # ... and hands on only this run's: ML Metadata refuses one execution outputting an artifact
  # twice (model 2 as the baseline and again as a candidate), which failed Airflow's run 2.
  assert [a.id for a in every_model["candidate"]] == [3]


@pytest.mark.e2e
def test_the_beam_orchestrator_runs_the_same_pipeline_end_to_end_and_from_cache(tmp_path, digits):
  """`vae-pipeline run --orchestrator beam`: TFX's BeamDagRunner runs every component, blesses
  and pushes a model, and a re-run is served from the same store's cache; progress, summary and
  report as with LocalDagRunner."""
  from PIL import Image
  from tests import image_files as files
  for i in range(0, 120 * 41, 41):
    folder = tmp_path / "data" / str(int(digits[1][i]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{i}.png").write_bytes(files.encode(Image.fromarray(digits[0][i, ..., 0])))
  out = tmp_path / "out"
  command = [CLI, "run", "--orchestrator", "beam", "--data", str(tmp_path / "data"),
             "--output-dir", str(out), "--epochs", "1", "--batch-size", "32", "--latent-dim", "2",
             "--max-loss", "1000"]

  def run():
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [path] = [line.split(": ", 1)[1] for line in result.stdout.splitlines()
              if line.startswith("Run report: ")]
    with open(os.path.join(path, "summary.json")) as f:
      return result.stdout, json.load(f)

  stdout, first = run()
  states = {c["component"]: c["state"] for c in first["components"]}
  assert len(states) == 11 and set(states.values()) == {"COMPLETE"}, states
  assert "Trainer done in" in stdout  # BeamDagRunner's node lines became progress lines
  assert first["blessed"] and first["pushed_dir"] and os.path.isfile(first["report"])
  assert os.listdir(out / "serving" / "image-vae") == [os.path.basename(first["pushed_dir"])]
  _, again = run()
  states = {c["component"]: c["state"] for c in again["components"]}
  assert states.pop("latest_blessed_model_resolver") == "COMPLETE"  # a resolver always resolves
  assert set(states.values()) == {"CACHED"}, states
