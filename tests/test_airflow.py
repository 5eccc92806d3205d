"""The Airflow DAG (pipeline/airflow_dag.py), loaded by Airflow's own DagBag and run end to end with
`airflow dags test` on a fresh Airflow home with its SQLite database."""
import glob
import json
import os
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image

from tests import image_files as files
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig

pytestmark = pytest.mark.e2e

AIRFLOW = os.path.join(os.path.dirname(sys.executable), "airflow")
COMPONENTS = ["ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
              "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher",
              "RunReport"]


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, digits):
  home = tmp_path_factory.mktemp("airflow")
  data, out = home / "data", home / "out"
  for i, image in enumerate(digits[0][:200]):
    (data / str(int(digits[1][i]))).mkdir(parents=True, exist_ok=True)
    (data / str(int(digits[1][i])) / f"{i}.png").write_bytes(
        files.encode(Image.fromarray(image[..., 0])))
  (home / "dags").mkdir()
  (home / "dags" / "vae_dag.py").write_text(
      "from vae_pipeline.airflow_dag import DAG  # noqa: F401\n")
  env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
             AIRFLOW__CORE__LOAD_EXAMPLES="False",
             AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="300",  # the DAG file imports TFX (8-17 s)
             VAE_PIPELINE_ARGS=(f"--data {data} --output-dir {out} --epochs 2 --batch-size 32 "
                                "--latent-dim 2 --max-loss 1000"),
             VAE_PIPELINE_SCHEDULE="0 4 * * 1-5")
  migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True,
                           timeout=300)
  assert migrate.returncode == 0, migrate.stderr[-2000:]
  return env, PipelineConfig(data=str(data), output_dir=str(out))


def test_airflow_loads_the_dag_with_its_schedule_and_one_run_at_a_time(airflow_home):
  env, _ = airflow_home
  script = (
      "import json\nfrom airflow.models import DagBag\n"
      f"bag = DagBag({env['AIRFLOW__CORE__DAGS_FOLDER']!r}, include_examples=False)\n"
      "dag = bag.get_dag('image-vae')\n"
      "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},"
      " 'schedule': str(dag.timetable.summary), 'max_active_runs': dag.max_active_runs,"
      " 'catchup': dag.catchup, 'upstream': {t.task_id: sorted(t.upstream_task_ids)"
      " for t in dag.tasks}}))\n")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  dag = json.loads(result.stdout.strip().splitlines()[-1])
  assert dag["errors"] == {}
  assert dag["schedule"] == "0 4 * * 1-5" and dag["max_active_runs"] == 1 and not dag["catchup"]
  assert sorted(dag["upstream"]) == sorted(COMPONENTS)
  assert dag["upstream"]["Trainer"] == ["SchemaGen", "Transform"]
  assert dag["upstream"]["Pusher"] == ["Evaluator", "Trainer"]


def test_airflow_dags_test_runs_the_whole_pipeline(airflow_home):
  env, config = airflow_home
  result = subprocess.run([AIRFLOW, "dags", "test", "image-vae", "2026-11-24"], env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  # Every component ran as a task and recorded its execution in the pipeline's ML Metadata.
  store = summary_lib.open_store(config.metadata_path)
  states = {e.type.rsplit(".", 1)[-1]: metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in store.get_executions()}
  assert len(states) == len(COMPONENTS)
  assert all(state in ("COMPLETE", "CACHED") for state in states.values()), states
  [pushed] = os.listdir(config.serving_dir)
  assert os.path.isfile(os.path.join(config.serving_dir, pushed, "saved_model.pb"))
  assert glob.glob(os.path.join(config.pipeline_root, "RunReport", "report", "*", "index.html"))
