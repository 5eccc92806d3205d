"""The Airflow DAG (pipeline/airflow_dag.py), loaded by Airflow's own DagBag and run by Airflow's
real scheduler, as a user runs it: `airflow scheduler` on a fresh Airflow home with its SQLite
database, each task an `airflow tasks run --local` process that parses the DAG file and forks its
task runner. (`airflow dags test` runs every task in one process and hides that fork.)"""
import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image

from tests import image_files as files
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig

pytestmark = pytest.mark.e2e

BIN = os.path.dirname(sys.executable)
AIRFLOW = os.path.join(BIN, "airflow")
COMPONENTS = ["ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
              "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher",
              "RunReport"]
RUN_TIMEOUT = 600  # seconds for one whole run under the scheduler (it takes ~2-3 minutes)
HANG_TIMEOUT_MINUTES = 0.25


def write_span(data, span, images, labels):
  for i, (image, label) in enumerate(zip(images, labels)):
    folder = data / f"span-{span}" / str(int(label))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{i}.png").write_bytes(files.encode(Image.fromarray(image[..., 0])))


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, digits):
  """A fresh Airflow home set up as docs/deployment.md says: the venv's bin/ on PATH, the
  one-line DAG file, the settings in the environment, `airflow db migrate`."""
  home = tmp_path_factory.mktemp("airflow")
  data, out = home / "data", home / "out"
  write_span(data, 1, digits[0][:200], digits[1][:200])
  (home / "dags").mkdir()
  (home / "dags" / "vae_dag.py").write_text(
      "from vae_pipeline.airflow_dag import DAG  # noqa: F401\n")
  # A second DAG whose ExampleGen hangs: its execution_timeout must fail the run.
  (home / "dags" / "hang_dag.py").write_text(
      "import time\n"
      "from vae_pipeline.airflow_dag import build_dag\n"
      f"DAG = build_dag(run_args='--pipeline-name vae-hang --data {data} --output-dir "
      f"{home / 'hang-out'}', schedule='none', task_timeout_minutes={HANG_TIMEOUT_MINUTES})\n"
      "def hang(*args, **kwargs):\n"
      "  time.sleep(3600)\n"
      "DAG.get_task('ExampleGen').python_callable = hang\n")
  env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
             AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
             AIRFLOW__CORE__LOAD_EXAMPLES="False",
             AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="300",  # the DAG file imports TFX (seconds)
             AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
             VAE_PIPELINE_ARGS=(f"--data {data} --output-dir {out} --epochs 2 --batch-size 32 "
                                "--latent-dim 2 --max-loss 1000 --max-loss-increase 1000"),
             # Runs only when triggered: with a cron schedule, unpausing would also start the
             # latest interval's run at once (catch-up off still runs the latest one).
             VAE_PIPELINE_SCHEDULE="none")
  migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True,
                           timeout=300)
  assert migrate.returncode == 0, migrate.stderr[-2000:]
  return env, home, PipelineConfig(data=str(data), output_dir=str(out))


def test_airflow_loads_the_dag_with_its_schedule_timeouts_and_one_run_at_a_time(airflow_home):
  env, _, _ = airflow_home
  script = (
      "import json\nfrom airflow.models import DagBag\n"
      f"bag = DagBag({env['AIRFLOW__CORE__DAGS_FOLDER']!r}, include_examples=False)\n"
      "dag = bag.get_dag('image-vae')\n"
      "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},"
      " 'schedule': str(dag.timetable.summary), 'max_active_runs': dag.max_active_runs,"
      " 'catchup': dag.catchup, 'upstream': {t.task_id: sorted(t.upstream_task_ids)"
      " for t in dag.tasks}, 'timeouts': sorted({t.execution_timeout.total_seconds()"
      " for t in dag.tasks}), 'hang': bag.get_dag('vae-hang').schedule_interval}))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(env, VAE_PIPELINE_TASK_TIMEOUT_MINUTES="90",
                                   VAE_PIPELINE_SCHEDULE="0 4 * * 1-5"), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  dag = json.loads(result.stdout.strip().splitlines()[-1])
  assert dag["errors"] == {}
  assert dag["schedule"] == "0 4 * * 1-5" and dag["max_active_runs"] == 1 and not dag["catchup"]
  assert sorted(dag["upstream"]) == sorted(COMPONENTS)
  assert dag["upstream"]["Trainer"] == ["SchemaGen", "Transform"]
  assert dag["upstream"]["Pusher"] == ["Evaluator", "Trainer"]
  assert dag["timeouts"] == [90 * 60]  # every task, from VAE_PIPELINE_TASK_TIMEOUT_MINUTES
  assert dag["hang"] is None  # VAE_PIPELINE_SCHEDULE "none": runs only when triggered


def test_parsing_the_dag_leaves_tensorflow_safe_to_fork(airflow_home):
  """The cause of a hang under the scheduler: after any TensorFlow op in the process that parses
  the DAG, the forked task runner's first tf.function never returns (Transform hung). The
  default source here is the bundled TFRecord file, which parsing reads."""
  env, _, _ = airflow_home
  script = (
      "import os, time\n"
      "from vae_pipeline.airflow_dag import DAG\n"
      "import tensorflow as tf\n"
      "pid = os.fork()\n"
      "if pid == 0:\n"
      "  f = tf.function(lambda x: tf.reduce_sum(tf.map_fn(lambda v: v * 2, x)))\n"
      "  os._exit(0 if int(f(tf.range(4))) == 12 else 1)\n"
      "for _ in range(600):\n"
      "  done, status = os.waitpid(pid, os.WNOHANG)\n"
      "  if done:\n"
      "    print('child exit', os.waitstatus_to_exitcode(status))\n"
      "    break\n"
      "  time.sleep(0.1)\n"
      "else:\n"
      "  os.kill(pid, 9)\n"
      "  print('child hung')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(env, VAE_PIPELINE_ARGS=f"--output-dir {env['AIRFLOW_HOME']}/o"),
                          timeout=300)
  assert result.stdout.strip().splitlines()[-1:] == ["child exit 0"], result.stderr[-2000:]


class Scheduler:
  """`airflow scheduler`, started here as a subprocess and stopped by its process id."""

  def __init__(self, env, home):
    self.env, self.home = env, home
    self.log = open(home / "scheduler.log", "w")
    self.process = subprocess.Popen([AIRFLOW, "scheduler"], env=env, stdout=self.log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

  def query(self, sql, *args):
    with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
      return db.execute(sql, args).fetchall()

  def airflow(self, *args):
    result = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

  def wait_for_dag(self, dag_id, timeout=300):
    deadline = time.monotonic() + timeout
    while not self.query("SELECT 1 FROM dag WHERE dag_id = ?", dag_id):
      assert self.process.poll() is None, "the scheduler stopped; see scheduler.log"
      assert time.monotonic() < deadline, f"{dag_id} never appeared in Airflow's database"
      time.sleep(2)

  def run(self, dag_id, run_id, timeout=RUN_TIMEOUT):
    """Triggers a run and waits for it to end; returns its state and each task's."""
    self.airflow("dags", "trigger", dag_id, "--run-id", run_id)
    deadline = time.monotonic() + timeout
    while True:
      [(state,)] = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?",
                              dag_id, run_id)
      if state in ("success", "failed"):
        return state, dict(self.query("SELECT task_id, state FROM task_instance WHERE "
                                      "dag_id = ? AND run_id = ?", dag_id, run_id))
      assert self.process.poll() is None, "the scheduler stopped; see scheduler.log"
      assert time.monotonic() < deadline, (
          f"{run_id} still {state} after {timeout} s: " + str(self.query(
              "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
              dag_id, run_id)))
      time.sleep(2)

  def stop(self):
    if self.process.poll() is None:
      os.killpg(self.process.pid, signal.SIGTERM)
      try:
        self.process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
    self.log.close()


def executions(config):
  store = summary_lib.open_store(config.metadata_path)
  return store, sorted(store.get_executions(), key=lambda e: e.id)


def test_the_real_scheduler_runs_the_dag_retrains_on_a_new_span_and_fails_a_hung_task(
    airflow_home, digits):
  env, home, config = airflow_home
  scheduler = Scheduler(env, home)
  try:
    for dag_id in ("image-vae", "vae-hang"):
      scheduler.wait_for_dag(dag_id)
      scheduler.airflow("dags", "unpause", dag_id)

    # Run 1: every task, each in its own process, a model pushed.
    state, tasks = scheduler.run("image-vae", "run-1")
    assert state == "success" and sorted(tasks) == sorted(COMPONENTS), tasks
    assert set(tasks.values()) == {"success"}, tasks
    [first] = os.listdir(config.serving_dir)
    assert os.path.isfile(os.path.join(config.serving_dir, first, "saved_model.pb"))
    assert glob.glob(os.path.join(config.pipeline_root, "RunReport", "report", "*", "index.html"))
    store, done = executions(config)
    [model_1] = store.get_artifacts_by_type("Model")

    # Run 2 on a new span: trains on span 2 and compares with run 1's blessed model.
    write_span(home / "data", 2, digits[0][200:400], digits[1][200:400])
    state, tasks = scheduler.run("image-vae", "run-2")
    assert state == "success" and set(tasks.values()) == {"success"}, tasks
    store, now = executions(config)
    new = [e for e in now if e.id > done[-1].id]
    by_type = {e.type.rsplit(".", 1)[-1]: e for e in new}
    assert metadata_store_pb2.Execution.State.Name(by_type["Trainer"].last_known_state) == "COMPLETE"
    examples = store.get_artifacts_by_type("Examples")
    assert max(a.custom_properties["span"].int_value for a in examples) == 2
    evaluator = by_type["Evaluator"].id
    inputs = {store.get_artifacts_by_id([e.artifact_id])[0].type_id: e.artifact_id
              for e in store.get_events_by_execution_ids([evaluator])
              if e.type == metadata_store_pb2.Event.INPUT}
    assert model_1.id in inputs.values(), "run 2 was not compared with run 1's model"
    [blessing] = [a for a in store.get_artifacts_by_type("ModelBlessing")
                  if any(e.execution_id == evaluator for e in store.get_events_by_artifact_ids([a.id]))]
    assert blessing.custom_properties["blessed"].int_value == 1  # --max-loss-increase 1000
    assert sorted(os.listdir(config.serving_dir))[0] == first and len(os.listdir(config.serving_dir)) == 2

    # A task that hangs fails at its execution_timeout, and says so.
    started = time.monotonic()
    state, tasks = scheduler.run("vae-hang", "hang-1", timeout=300)
    assert state == "failed" and tasks["ExampleGen"] == "failed", tasks
    assert time.monotonic() - started < 200
    [log] = glob.glob(str(home / "logs" / "dag_id=vae-hang" / "run_id=hang-1" /
                          "task_id=ExampleGen" / "*.log"))
    text = open(log).read()
    assert "AirflowTaskTimeout" in text
    assert ("ExampleGen ran longer than its execution_timeout of 0:00:15 "
            "(VAE_PIPELINE_TASK_TIMEOUT_MINUTES) and was stopped") in text
  finally:
    scheduler.stop()
  assert scheduler.process.returncode is not None
