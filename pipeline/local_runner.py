"""Runs the pipeline on this machine: TFX's LocalDagRunner (default) or BeamDagRunner, Beam
in-process inside the components, SQLite ML Metadata.

Both orchestrators are TFX's IR-based runners of the same `create_pipeline`: the same store,
cache, lock, summary and report. LocalDagRunner runs the components one after another in this
process; BeamDagRunner makes each component a step of a Beam pipeline (TFX's own MNIST example
runs this way), which is what to extend towards a Beam cluster.
"""
import contextlib
import fcntl
import os
import signal
import threading
import time

from ml_metadata.proto import metadata_store_pb2
from tensorflow.python.util import deprecation
from tfx.orchestration import metadata as tfx_metadata
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline

from vae_pipeline import beam_local
from vae_pipeline import config as config_lib
from vae_pipeline import progress
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.pipeline import EXAMPLE_GEN, create_example_gen, create_pipeline


# TFMA calls deprecated TensorFlow APIs; the warnings are for its authors, not our users.
deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access


class StoreBusyError(RuntimeError):
  """Another local run holds the ML Metadata store."""


class StoreDamagedError(RuntimeError):
  """The ML Metadata store is unreadable, or lost while its pipeline root holds artifacts."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) stopped the run; `component` is the one that was running (or None)."""

  def __init__(self, component=None):
    super().__init__(component)
    self.component = component


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
          if wait_seconds > 0:  # it waited as told: suggesting --wait again would not help
            raise StoreBusyError(
                f"another run is using {metadata_path} ({holder}), still after waiting "
                f"{wait_seconds:g} s; let it finish, or use another --output-dir") from None
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


# config.ORCHESTRATORS' runners, in its order.
RUNNERS = dict(zip(config_lib.ORCHESTRATORS, (LocalDagRunner, BeamDagRunner)))


def run(config: PipelineConfig, show_progress=True) -> summary_lib.RunSummary:
  """Runs the whole pipeline with config.orchestrator, waiting up to config.wait_seconds for
  another run holding the store, then writes the run's summary under config.runs_dir (the
  pictures are in the RunReport component's HTML report).

  A component's failure propagates (after the summary of what did run is written, with the
  failed component's reason). Ctrl-C raises `Interrupted` (a KeyboardInterrupt), likewise after
  the summary. A damaged or lost ML Metadata store raises StoreDamagedError before anything is
  written.
  """
  config = config.resolved()
  beam_local.skip_worker_packages_for_direct_runner()
  with store_lock(config.metadata_path, config.wait_seconds):
    check_store(config)
    return _run(config, show_progress, RUNNERS[config.orchestrator])


def check_store(config: PipelineConfig):
  """StoreDamagedError unless the store can be read and knows every artifact folder of the
  pipeline root (summary.store_problem): never let a new run write into an old run's."""
  problem = summary_lib.store_problem(config.metadata_path, config.pipeline_root,
                                      writable=True)
  if problem:
    raise StoreDamagedError(problem)


def _run(config, show_progress, runner=LocalDagRunner):
  connection = tfx_metadata.sqlite_metadata_connection_config(config.metadata_path)
  pipeline = create_pipeline(config, connection)
  earlier = _run_ids(config.metadata_path)
  started = time.monotonic()
  shown = None
  try:
    shows = progress.component_progress() if show_progress else contextlib.nullcontext()
    with shows as shown:
      runner().run(pipeline)
  except BaseException as error:  # pylint: disable=broad-except  (Ctrl-C too)
    # Record what did run (and which component failed, and why) before the error goes up.
    with _no_interrupts():
      component = record_failure(config, error, earlier, time.monotonic() - started,
                                 running=shown.running if shown else None)
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, Interrupted):
      raise Interrupted(component) from None
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
    check_store(config)
    LocalDagRunner().run(Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[create_example_gen(config)], beam_pipeline_args=config.beam_args,
        metadata_connection_config=tfx_metadata.sqlite_metadata_connection_config(
            config.metadata_path)))
  return summary_lib.summarize(config.metadata_path).component(EXAMPLE_GEN)


def one_line(error: BaseException) -> str:
  """An exception as the one line a person reads: its type and its message's first line."""
  if isinstance(error, KeyboardInterrupt):
    return f"{summary_lib.INTERRUPTED} (Ctrl-C or SIGINT)"
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def record_failure(config, error, earlier_runs=(), wall_seconds=None, running=None):
  """After a run stopped on `error`: in ML Metadata, every component of the run that never
  finished (a crashed driver or Ctrl-C leave them RUNNING) becomes FAILED, and the failed one
  gets the reason (summary.FAILURE_REASON); then the summary of what ran is written. `running`:
  the component the progress lines last showed starting, named on the run when it stopped
  before its execution was recorded. Returns the failed component's name (`running` if the
  run recorded nothing). Never raises."""
  try:
    store = summary_lib.open_store(config.metadata_path, writable=True)
    runs = summary_lib.run_ids(store)
    if not runs or runs[-1] in earlier_runs:
      return running  # it stopped before its run was recorded: nothing to summarize
    run = store.get_context_by_type_and_name("pipeline_run", runs[-1])
    failed = []
    for execution in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
      state = execution.last_known_state
      unfinished = state in (metadata_store_pb2.Execution.NEW,
                             metadata_store_pb2.Execution.RUNNING,
                             metadata_store_pb2.Execution.UNKNOWN)
      if not unfinished and state != metadata_store_pb2.Execution.FAILED:
        continue
      if summary_lib.FAILURE_REASON not in execution.custom_properties:
        execution.custom_properties[summary_lib.FAILURE_REASON].string_value = one_line(error)
      execution.last_known_state = metadata_store_pb2.Execution.FAILED
      store.put_executions([execution])
      node = next((c.name for c in store.get_contexts_by_execution(execution.id)
                   if c.type == "node"), "")
      failed.append(node.split(".", 1)[-1])
    if not failed and running:
      run.custom_properties[summary_lib.FAILED_COMPONENT].string_value = running
      run.custom_properties[summary_lib.FAILURE_REASON].string_value = one_line(error)
      store.put_contexts([run])
    summary = summary_lib.summarize(config.metadata_path, runs[-1])
    summary.wall_seconds = wall_seconds
    write_summary(summary, config, run_dir_of(summary, config))
    return failed[-1] if failed else running
  except Exception:  # pylint: disable=broad-except  (never hide the real error behind this one)
    return running


@contextlib.contextmanager
def _no_interrupts():
  """A second Ctrl-C does not cut the recording of the first one short."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _run_ids(metadata_path):
  if not os.path.isfile(metadata_path) or not os.path.getsize(metadata_path):
    return set()
  try:
    return set(summary_lib.run_ids(summary_lib.open_store(metadata_path)))
  except Exception:  # pylint: disable=broad-except
    return set()


def run_dir_of(summary, config):
  return os.path.join(config.runs_dir, summary.run_id.replace(":", ""))


def write_summary(summary, config, run_dir):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    f.write(summary.to_json())
  with open(os.path.join(run_dir, "summary.txt"), "w") as f:
    f.write(summary_lib.format_summary(summary, config.loss_upper_bound,
                                       config.max_loss_increase) + "\n")
