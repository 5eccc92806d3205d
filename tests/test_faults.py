"""Bad input, tried adversarially (issue 20): each fault is built for real and its outcome
asserted exactly. Partial output files of the model commands, Ctrl-C during a run, a lost or
damaged ML Metadata store, a diverged model with NaN metrics, a failed run's record, `runs` on a
killed run, the lock's message after --wait.

The whole-pipeline tests share one folder of 200 digits as PNG files and small settings; the
Ctrl-C runs leave a pushed model that the model-command tests use.
"""
import errno
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from tests import image_files as files
from vae_pipeline.cli import main as cli_lib
from vae_pipeline import local_runner
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig

CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")
SMALL = ["--batch-size", "32", "--latent-dim", "2", "--max-loss", "100000"]
NUM_IMAGES = 200


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, digits):
  """200 digits, one PNG file each, in one folder."""
  folder = tmp_path_factory.mktemp("pngs")
  for i, image in enumerate(digits[0][:NUM_IMAGES]):
    (folder / f"digit{i:03d}.png").write_bytes(files.encode(Image.fromarray(image[..., 0])))
  return str(folder)


def one_line(stderr):
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def component_row(text, component):
  """(state, the line below) of a component's row in a summary.txt."""
  lines = text.splitlines()
  row = next(i for i, line in enumerate(lines) if line.split()[:1] == [component])
  return lines[row].split()[1], lines[row + 1].strip()


def summary_file(config, run_id, name="summary.txt"):
  return os.path.join(config.runs_dir, run_id.replace(":", ""), name)


# Ctrl-C (SIGINT to the run's process group) and a killed run, then a run that completes.

def start(data, output_dir, epochs):
  # Ctrl-C's default action in the run, as in a terminal: a suite started in the background
  # (`make test &`) ignores SIGINT, and its children would inherit that.
  return subprocess.Popen(
      [CLI, "run", "--data", data, "--output-dir", output_dir, "--epochs", str(epochs)] + SMALL,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_when_started(process, component, signal_number, after=0.0):
  """Sends `signal_number` to the run's process group once its progress line shows `component`
  starting (and `after` seconds more); returns (exit code, stdout, stderr)."""
  seen = []
  for line in process.stdout:
    seen.append(line)
    if line.rstrip().endswith(f"] {component} ..."):
      break
  else:
    process.wait()
    pytest.fail(f"{component} never started:\n" + "".join(seen) + process.stderr.read())
  time.sleep(after)
  os.killpg(process.pid, signal_number)
  try:
    stdout, stderr = process.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    pytest.fail(f"the run did not exit within 120 s of signal {signal_number}")
  return process.returncode, "".join(seen) + stdout, stderr


@pytest.fixture(scope="module")
def stopped_runs(pngs, tmp_path_factory):
  """Four runs on one store: Ctrl-C as Transform starts; Ctrl-C a second into the Trainer;
  SIGKILL in the Trainer; then one that completes (and pushes)."""
  output_dir = str(tmp_path_factory.mktemp("stopped"))
  config = PipelineConfig(data=pngs, output_dir=output_dir)
  transform = stop_when_started(start(pngs, output_dir, 30), "Transform", signal.SIGINT)
  trainer = stop_when_started(start(pngs, output_dir, 30), "Trainer", signal.SIGINT, after=1.0)
  killed = stop_when_started(start(pngs, output_dir, 30), "Trainer", signal.SIGKILL, after=0.5)
  completed = subprocess.run(
      [CLI, "run", "--data", pngs, "--output-dir", output_dir, "--epochs", "1"] + SMALL,
      capture_output=True, text=True, timeout=600)
  return config, dict(transform=transform, trainer=trainer, killed=killed, completed=completed)


@pytest.mark.e2e
def test_ctrl_c_says_which_component_it_stopped_and_writes_the_summary(stopped_runs):
  config, runs = stopped_runs
  run_ids = summary_lib.run_ids(summary_lib.open_store(config.metadata_path))
  assert len(run_ids) == 4, run_ids
  for (name, (code, stdout, stderr)), run_id in zip(
      [("Transform", runs["transform"]), ("Trainer", runs["trainer"])], run_ids):
    assert code == 130, stdout[-2000:] + stderr[-3000:]
    assert one_line(stderr) == f"vae-pipeline run: interrupted during {name}"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    text = open(summary_file(config, run_id)).read()
    assert text.startswith(f"Run {run_id}\n")
    assert component_row(text, name) == ("FAILED", "interrupted (Ctrl-C or SIGINT)"), text
    saved = json.load(open(summary_file(config, run_id, "summary.json")))
    record = next(c for c in saved["components"] if c["component"] == name)
    assert (record["state"], record["reason"]) == ("FAILED", "interrupted (Ctrl-C or SIGINT)")
    assert saved["run_id"] == run_id and saved["wall_seconds"] > 0
  # The Trainer's execution had started: ML Metadata says FAILED, not RUNNING.
  trainer_run = summary_lib.summarize(config.metadata_path, run_ids[1])
  assert trainer_run.component("Transform").state == "COMPLETE"
  assert trainer_run.component("Trainer").state == "FAILED"
  assert trainer_run.component("Trainer").seconds > 0.5  # its own record (started, updated)
  # The lock went with each stopped run; the next run resumes and completes.
  completed = runs["completed"]
  assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
  assert completed.stderr == ""
  done = summary_lib.summarize(config.metadata_path, run_ids[3])
  assert done.component("Transform").state == "CACHED"  # the Trainer-interrupted run's
  assert done.component("Trainer").state == "COMPLETE" and done.pushed_dir
  assert open(config.metadata_path + ".lock").read() == ""


@pytest.mark.e2e
def test_runs_shows_stopped_and_killed_runs_honestly(stopped_runs):
  config, runs = stopped_runs
  assert runs["killed"][0] == -signal.SIGKILL
  result = subprocess.run([CLI, "runs", "--output-dir", config.output_dir],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == ""  # no TensorFlow deprecation warnings
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1 + 4 and "nan" not in result.stdout
  assert lines[1].endswith("(interrupted: Transform)")
  assert lines[2].endswith("(interrupted: Trainer)")
  assert lines[3].endswith("(unfinished: killed during Trainer)")
  for line in lines[1:4]:  # no metrics, not blessed: dashes
    assert line.split()[3:6] == ["-", "-", "-"], line
  done = summary_lib.summarize(config.metadata_path)
  assert lines[4].split()[5] == "yes" and lines[4].endswith(done.pushed_dir)


# A component whose driver crashes: FAILED with the reason, not RUNNING.

@pytest.mark.e2e
def test_a_crashed_driver_is_recorded_as_failed_with_its_reason(pngs, tmp_path, monkeypatch,
                                                                 capsys):
  from tfx.components.example_gen import driver  # pylint: disable=import-outside-toplevel

  def crash(self, *args, **kwargs):
    raise OSError(errno.EIO, "Input/output error", os.path.join(pngs, "digit003.png"))

  monkeypatch.setattr(driver.Driver, "run", crash)
  output_dir = str(tmp_path / "out")
  assert cli_lib.main(["run", "--data", pngs, "--output-dir", output_dir, "--epochs", "1"]
                      + SMALL) == 1
  reason = f"OSError: [Errno 5] Input/output error: '{os.path.join(pngs, 'digit003.png')}'"
  assert f"vae-pipeline run: failed: {reason}" in capsys.readouterr().err
  config = PipelineConfig(data=pngs, output_dir=output_dir)
  summary = summary_lib.summarize(config.metadata_path)
  example_gen = summary.component("ExampleGen")
  assert (example_gen.state, example_gen.reason) == ("FAILED", reason)
  text = open(summary_file(config, summary.run_id)).read()
  assert component_row(text, "ExampleGen") == ("FAILED", reason)
  assert "RUNNING" not in text
  assert cli_lib.main(["runs", "--output-dir", output_dir]) == 0
  listed = capsys.readouterr()
  assert listed.out.strip().splitlines()[1].endswith("(failed: ExampleGen)")
  assert "nan" not in listed.out


# --wait: once it has timed out, the message does not suggest --wait again.

def test_the_lock_message_suggests_wait_only_when_it_did_not_wait(tmp_path):
  path = str(tmp_path / "store" / "metadata.sqlite")
  held, release = threading.Event(), threading.Event()

  def hold():
    with local_runner.store_lock(path):
      held.set()
      release.wait(30)

  holder = threading.Thread(target=hold)
  holder.start()
  try:
    held.wait(30)
    with pytest.raises(local_runner.StoreBusyError) as at_once:
      with local_runner.store_lock(path):
        pass
    assert str(at_once.value).endswith(
        "; let it finish, or pass --wait SECONDS to wait for it, or use another --output-dir")
    started = time.monotonic()
    with pytest.raises(local_runner.StoreBusyError) as waited:
      with local_runner.store_lock(path, wait_seconds=0.6):
        pass
    assert time.monotonic() - started >= 0.6
    message = str(waited.value)
    assert message.startswith(f"another run is using {path} (pid {os.getpid()}, since ")
    assert message.endswith("), still after waiting 0.6 s; let it finish, or use another "
                            "--output-dir")
    assert "--wait" not in message
  finally:
    release.set()
    holder.join()


# A lost or damaged ML Metadata store beside an existing pipeline root.

@pytest.fixture(scope="module")
def ingested(pngs, tmp_path_factory):
  """An output folder where ExampleGen has run: a store and the artifacts it records."""
  output_dir = str(tmp_path_factory.mktemp("ingested"))
  local_runner.run_example_gen(PipelineConfig(data=pngs, output_dir=output_dir))
  return output_dir


def tree(folder):
  """Every file under `folder` (but the lock file, which every run opens) with its bytes."""
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if not name.endswith(".lock"):
        path = os.path.join(root, name)
        found[os.path.relpath(path, folder)] = open(path, "rb").read()
  return found


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated"])
def test_a_lost_or_damaged_store_stops_the_run_before_anything_is_written(
    ingested, pngs, tmp_path, capsys, damage):
  output_dir = str(tmp_path / "out")
  shutil.copytree(ingested, output_dir)
  config = PipelineConfig(data=pngs, output_dir=output_dir)
  store, root = config.metadata_path, config.pipeline_root
  if damage == "deleted":
    os.remove(store)
  elif damage == "emptied":
    open(store, "w").close()
  else:
    os.truncate(store, os.path.getsize(store) // 2)
  before = tree(output_dir)
  code = cli_lib.main(["run", "--data", pngs, "--output-dir", output_dir, "--epochs", "1"]
                      + SMALL)
  line = one_line(capsys.readouterr().err)
  assert code == 2, line
  if damage == "truncated":
    assert line == (
        f"vae-pipeline run: error: the ML Metadata store {store} is damaged (SQLite: database "
        "disk image is malformed): restore it from a backup, or pass a new --output-dir, or "
        f"delete it and the pipeline root {root} to start afresh (the record of the earlier "
        "runs is then lost)")
  else:
    state = {"deleted": "is missing", "emptied": "is empty (0 bytes)"}[damage]
    assert line == (
        f"vae-pipeline run: error: the ML Metadata store {store} {state}, but the pipeline "
        f"root {root} holds earlier runs' artifacts: a new run would reuse their execution ids "
        "and write into their folders. Restore the store from a backup, or pass a new "
        f"--output-dir, or delete {root} too to start afresh")
  assert tree(output_dir) == before  # nothing written, the store not touched
  assert not os.path.exists(config.runs_dir)
  if damage == "truncated":  # `runs` says the same, in one line
    assert cli_lib.main(["runs", "--output-dir", output_dir]) == 2
    assert f"the ML Metadata store {store} is damaged" in one_line(capsys.readouterr().err)


# A diverged model whose loss is finite but whose bounds are NaN is never blessed.

def test_tfma_validation_fails_every_nan_or_infinite_metric():
  """TFMA 0.47's own threshold check (evaluators/metrics_validator.py) on this project's
  EvalConfig, as the TFX Evaluator adjusts it without and with a baseline."""
  from tensorflow_model_analysis.evaluators import metrics_validator
  from tensorflow_model_analysis.metrics import metric_types
  from tensorflow_model_analysis.utils import config_util
  from vae_pipeline.models import evaluation, features

  for has_baseline in (False, True):
    config = config_util.update_eval_config_with_defaults(
        evaluation.eval_config(1e30, 0.0), has_baseline=has_baseline,
        rubber_stamp=not has_baseline)
    model = evaluation.CANDIDATE if has_baseline else ""  # one model: TFMA drops its name

    def failures(values):
      key = lambda name, **kw: metric_types.MetricKey(name=name, example_weighted=False, **kw)
      metrics = {key(name, model_name=model): value for name, value in values.items()}
      if has_baseline:
        for name in (features.RECONSTRUCTION_LOSS, features.KL_LOSS, features.LOSS):
          metrics[key(name, model_name=evaluation.BASELINE)] = 100.0
        metrics[key(features.LOSS, model_name=model, is_diff=True)] = values[features.LOSS] - 100
      result = metrics_validator.validate_metrics(((), metrics), config)
      found = {f.metric_key.name for s in result.metric_validations_per_slice for f in s.failures}
      assert result.validation_ok == (not found)
      return found

    finite = {name: 100.0 for name in features.LOSS_OUTPUTS}
    assert failures(finite) == set()  # the keys match: a finite model passes
    assert failures(dict(finite, **{features.NLL_IW: 1e300})) == set()
    for name in features.LOSS_OUTPUTS:
      for value in (math.nan, math.inf, -math.inf):
        assert failures(dict(finite, **{name: value})) == {name}, (has_baseline, name, value)


@pytest.mark.e2e
def test_a_diverged_model_with_a_nan_metric_is_not_blessed_under_a_loose_bound(pngs, tmp_path):
  output_dir = str(tmp_path / "out")
  result = subprocess.run(
      [CLI, "run", "--data", pngs, "--output-dir", output_dir, "--epochs", "1", "--batch-size",
       "32", "--latent-dim", "2", "--learning-rate", "10", "--max-loss", "1e30"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  config = PipelineConfig(data=pngs, output_dir=output_dir)
  summary = summary_lib.summarize(config.metadata_path)
  broken = sorted(name for name, value in summary.metrics.items() if not math.isfinite(value))
  assert broken, f"the training did not diverge to a non-finite metric: {summary.metrics}"
  assert summary.blessed is False and summary.pushed_dir is None
  assert not os.path.isdir(config.serving_dir) or not os.listdir(config.serving_dir)
  for name in broken:
    reason = (f"{name} is {summary.metrics[name]} (not a finite number): the model diverged or "
              "is broken; a model with a NaN or infinite metric is never blessed")
    assert reason in summary.blessing_reasons
    assert f"\n  {reason}\n" in result.stdout
  assert "NOT blessed" in result.stdout and "Not pushed." in result.stdout


# The model commands write their outputs whole or not at all.

@pytest.fixture(scope="module")
def model(stopped_runs):
  from vae_pipeline.client import use  # pylint: disable=import-outside-toplevel
  config, _ = stopped_runs
  return use.Model(summary_lib.summarize(config.metadata_path).pushed_dir)


@pytest.mark.e2e
def test_no_model_command_leaves_a_partial_output(model, pngs, tmp_path, monkeypatch):
  import builtins
  import io
  from vae_pipeline.client import use  # pylint: disable=import-outside-toplevel

  out = tmp_path / "out"
  out.mkdir()
  (out / "scores.csv").write_text("an earlier result\n")
  real_save, real_open = Image.Image.save, builtins.open
  disk_full = OSError(errno.ENOSPC, "No space left on device")
  fails = {"picture": lambda path: True}

  def save(self, path, *args, **kwargs):  # a picture: half of it reaches the disk, then ENOSPC
    if isinstance(path, (str, os.PathLike)) and fails["picture"](str(path)):
      buffer = io.BytesIO()
      real_save(self, buffer, format="PNG")
      with real_open(path, "wb") as f:
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
      raise disk_full
    return real_save(self, path, *args, **kwargs)

  class HalfFile:  # a CSV file: half of the text reaches the disk, then ENOSPC
    def __init__(self, path, *args, **kwargs):
      self.file = real_open(path, *args, **kwargs)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.file.close()

    def write(self, text):
      self.file.write(text[:len(text) // 2])
      self.file.flush()
      raise disk_full

  monkeypatch.setattr(Image.Image, "save", save)
  monkeypatch.setattr(use, "open", HalfFile, raising=False)
  one = os.path.join(pngs, "digit000.png")
  two = os.path.join(pngs, "digit001.png")
  commands = {
      "generated.png": lambda o: use.generate(model, 12, 0, o),
      "reconstructions.png": lambda o: use.reconstruct(model, pngs, o),
      "interpolation.png": lambda o: use.interpolate(model, one, two, o),
      "encoded.csv": lambda o: use.encode(model, pngs, o),
      "scores.csv": lambda o: use.score(model, pngs, o),
  }
  for name, command in commands.items():
    with pytest.raises(OSError, match="No space left on device"):
      command(str(out / name))
    assert sorted(os.listdir(out)) == ["scores.csv"], name  # no partial or temporary file
  assert (out / "scores.csv").read_text() == "an earlier result\n"  # left as it was
  # latent-plot writes two files: the scatter is written, the manifold fails -> neither.
  fails["picture"] = lambda path: "_manifold." in os.path.basename(path)
  with pytest.raises(OSError, match="No space left on device"):
    use.latent_plot(model, pngs, str(out / "latent.png"))
  assert sorted(os.listdir(out)) == ["scores.csv"]
  # A name the file system cannot encode (as a non-UTF-8 file name reads) in the middle of the
  # rows: the CSV is not left with the rows before it.
  monkeypatch.setattr(use, "open", real_open, raising=False)
  names, pixels = use.read_images(pngs, model.image_shape)
  names[5] = os.path.join(pngs, "bad-\udcff.png")
  monkeypatch.setattr(use, "read_images", lambda *args, **kwargs: (names, pixels))
  with pytest.raises(UnicodeEncodeError):
    use.encode(model, pngs, str(out / "encoded.csv"))
  assert sorted(os.listdir(out)) == ["scores.csv"]
  # Nothing fails: each output is there, whole.
  monkeypatch.undo()
  use.score(model, pngs, str(out / "scores.csv"))
  rows = (out / "scores.csv").read_text().splitlines()
  assert rows[0] == "rank,image,score,percentile,is_anomaly,loss" and len(rows) == 1 + NUM_IMAGES
  assert use.latent_plot(model, pngs, str(out / "latent.png")) == [
      str(out / "latent.png"), str(out / "latent_manifold.png")]
  assert sorted(os.listdir(out)) == ["latent.png", "latent_manifold.png", "scores.csv"]


@pytest.mark.e2e
def test_score_with_a_broken_image_among_good_ones_writes_nothing(model, pngs, tmp_path):
  folder = tmp_path / "images"
  shutil.copytree(pngs, folder)
  (folder / "digit100.png").write_bytes(files.truncated_png())
  result = subprocess.run([CLI, "score", str(folder), "--size-policy", "reject", "--out",
                           "scores.csv", "--model", model.path],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "digit100.png" in one_line(result.stderr)
  assert sorted(os.listdir(tmp_path)) == ["images"]


def test_a_store_a_killed_run_left_mid_write_is_recovered_not_called_damaged(tmp_path):
  """SIGKILL during a write leaves a hot journal: opened read-only SQLite refuses the store
  ("attempt to write a readonly database"); the run, holding the lock, lets SQLite roll it back
  (as ML Metadata's own opening does) and goes on."""
  store = str(tmp_path / "metadata.sqlite")
  root = tmp_path / "root"
  (root / "Trainer" / "model" / "3").mkdir(parents=True)
  with sqlite3.connect(store) as connection:
    connection.execute("CREATE TABLE Execution (id INTEGER PRIMARY KEY, value TEXT)")
    connection.executemany("INSERT INTO Execution (value) VALUES (?)", [("x" * 1000,)] * 200)
  subprocess.run([sys.executable, "-c", (
      "import os, sqlite3\n"
      f"connection = sqlite3.connect({store!r})\n"
      "connection.execute('PRAGMA cache_size = 1')\n"
      "connection.execute('BEGIN')\n"
      "connection.execute(\"UPDATE Execution SET value = 'y' * 2000\")\n"
      "os._exit(9)")], check=False)
  assert os.path.exists(store + "-journal")
  assert summary_lib.store_problem(store, str(root)) is None  # read-only: not judged
  assert summary_lib.store_problem(store, str(root), writable=True) is None
  assert not os.path.exists(store + "-journal")  # rolled back
  with sqlite3.connect(store) as connection:
    assert connection.execute("SELECT COUNT(*), MAX(LENGTH(value)) FROM Execution").fetchone() \
        == (200, 1000)
  (root / "Trainer" / "model" / "201").mkdir()  # an artifact the store does not know
  assert "is older than the artifacts beside it (it records executions up to id 200; " \
      f"{root / 'Trainer' / 'model' / '201'} was written by execution 201)" in \
      summary_lib.store_problem(store, str(root), writable=True)
