"""Runs the pipeline on this machine: LocalDagRunner, Beam in-process, SQLite ML Metadata."""
import contextlib
import os
import time

from tensorflow.python.util import deprecation
from tfx.orchestration import metadata as tfx_metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline

from vae_pipeline import progress
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.pipeline import EXAMPLE_GEN, create_example_gen, create_pipeline


# TFMA calls deprecated TensorFlow APIs; the warnings are for its authors, not our users.
deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access


def run(config: PipelineConfig, show_progress=True) -> summary_lib.RunSummary:
  """Runs the whole pipeline, then writes the run's summary under config.runs_dir (the
  pictures are in the RunReport component's HTML report).

  A component's failure propagates (after the summary of what did run is written).
  """
  config = config.resolved()
  os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
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
  os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
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
