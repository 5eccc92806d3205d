"""Runs the pipeline on this machine: LocalDagRunner, Beam in-process, SQLite ML Metadata."""
import contextlib
import fcntl
import os
import time

from tensorflow.python.util import deprecation
from tfx.orchestration import metadata as tfx_metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline

from vae_pipeline import beam_local
from vae_pipeline import progress
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.pipeline import EXAMPLE_GEN, create_example_gen, create_pipeline


# TFMA calls deprecated TensorFlow APIs; the warnings are for its authors, not our users.
deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access


class StoreBusyError(RuntimeError):
  """Another local run holds the ML Metadata store."""


@contextlib.contextmanager
def store_lock(metadata_path, wait_seconds=0.0):
  """One run at a time per ML Metadata store: two processes writing one SQLite file lock each
  other out or corrupt it. The lock is the OS's (flock): it goes with its process, even a killed
  one, so no stale lock is ever left behind."""
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  with open(metadata_path + ".lock", "a+") as lock:
    deadline = time.monotonic() + wait_seconds
    while True:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() >= deadline:
          lock.seek(0)
          holder = lock.read().strip() or "another process"
          raise StoreBusyError(
              f"another run is using {metadata_path} ({holder}); let it finish, or pass "
              "--wait SECONDS to wait for it, or use another --output-dir") from None
        time.sleep(0.5)
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    lock.flush()
    try:
      yield
    finally:
      lock.truncate(0)
      fcntl.flock(lock, fcntl.LOCK_UN)


def run(config: PipelineConfig, show_progress=True, wait_seconds=0.0) -> summary_lib.RunSummary:
  """Runs the whole pipeline, then writes the run's summary under config.runs_dir (the
  pictures are in the RunReport component's HTML report).

  A component's failure propagates (after the summary of what did run is written).
  """
  config = config.resolved()
  beam_local.skip_worker_packages_for_direct_runner()
  with store_lock(config.metadata_path, wait_seconds):
    return _run(config, show_progress)


def _run(config, show_progress):
  connection = tfx_metadata.sqlite_metadata_connection_config(config.metadata_path)
  pipeline = create_pipeline(config, connection)
  started = time.monotonic()
  try:
    with progress.component_progress() if show_progress else contextlib.nullcontext():
      LocalDagRunner().run(pipeline)
  except Exception:
    # Record what did run (and which component failed) before the error goes up.
    with contextlib.suppress(Exception):  # never hide the real error behind this one
      summary = summary_lib.summarize(config.metadata_path)
      summary.wall_seconds = time.monotonic() - started
      write_summary(summary, config, run_dir_of(summary, config))
    raise
  summary = summary_lib.summarize(config.metadata_path)
  summary.wall_seconds = time.monotonic() - started
  write_summary(summary, config, run_dir_of(summary, config))
  return summary


def run_example_gen(config: PipelineConfig) -> summary_lib.ComponentRun:
  """Runs ExampleGen alone (ingestion tests and benchmarks); returns its record."""
  config = config.resolved()
  beam_local.skip_worker_packages_for_direct_runner()
  with store_lock(config.metadata_path):
    LocalDagRunner().run(Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[create_example_gen(config)], beam_pipeline_args=config.beam_args,
        metadata_connection_config=tfx_metadata.sqlite_metadata_connection_config(
            config.metadata_path)))
  return summary_lib.summarize(config.metadata_path).component(EXAMPLE_GEN)


def run_dir_of(summary, config):
  return os.path.join(config.runs_dir, summary.run_id.replace(":", ""))


def write_summary(summary, config, run_dir):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    f.write(summary.to_json())
  with open(os.path.join(run_dir, "summary.txt"), "w") as f:
    f.write(summary_lib.format_summary(summary, config.loss_upper_bound,
                                       config.max_loss_increase) + "\n")
