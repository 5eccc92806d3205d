"""The pipeline as an Airflow DAG: Airflow's scheduler retrains it on a cron schedule.

Put a file in Airflow's dags folder that imports this one:

    from vae_pipeline.airflow_dag import DAG  # noqa: F401

Settings come from the environment (read when Airflow parses the DAG):
  VAE_PIPELINE_ARGS      setting flags of `vae-pipeline run` (not --orchestrator or --wait),
                         e.g. "--data /data/digits --output-dir /srv/vae --span-window 2
                         --epochs 25" (default: run's defaults)
  VAE_PIPELINE_SCHEDULE  a cron expression (default "0 3 * * *": 03:00 every day), or "none":
                         runs only when triggered
  VAE_PIPELINE_TASK_TIMEOUT_MINUTES
                         a task running longer fails, and with it the run (default 360)

One run at a time (max_active_runs=1: two runs would write one SQLite ML Metadata store at once)
and no catch-up of missed days. Each component is one Airflow task; caching and the blessing
work as in `vae-pipeline run`. Parsing imports TFX (seconds): raise
AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT (docs/deployment.md).

Airflow's scheduler parses this file in every task's process and then forks the task runner.
Parsing therefore reads the data source without running any TensorFlow op (data/sources.py):
after one, a forked child's first tf.function hangs forever (Transform did).
"""
import datetime
import logging
import os
import shlex

from tfx.orchestration import metadata
from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

from vae_pipeline import beam_local
from vae_pipeline import config as config_lib
from vae_pipeline.pipeline import create_pipeline

DEFAULT_SCHEDULE = "0 3 * * *"
NO_SCHEDULE = "none"
# Generous: a hang should fail the run, not a long training on big data.
DEFAULT_TASK_TIMEOUT_MINUTES = 360.0


def _say_why_it_failed(context):
  """Airflow's on_failure_callback: a task stopped by its execution_timeout says so plainly."""
  from airflow.exceptions import AirflowTaskTimeout  # pylint: disable=import-outside-toplevel
  task = context["task"]
  if isinstance(context.get("exception"), AirflowTaskTimeout):
    logging.getLogger(__name__).error(
        "%s ran longer than its execution_timeout of %s (VAE_PIPELINE_TASK_TIMEOUT_MINUTES) and "
        "was stopped: the run fails. Look at this task's log above for where it hung.",
        task.task_id, task.execution_timeout)


def build_dag(run_args=None, schedule=None, task_timeout_minutes=None):
  """The Airflow DAG for `vae-pipeline run RUN_ARGS`, scheduled by a cron expression."""
  run_args = os.environ.get("VAE_PIPELINE_ARGS", "") if run_args is None else run_args
  schedule = schedule or os.environ.get("VAE_PIPELINE_SCHEDULE", DEFAULT_SCHEDULE)
  if task_timeout_minutes is None:
    task_timeout_minutes = float(os.environ.get("VAE_PIPELINE_TASK_TIMEOUT_MINUTES",
                                                DEFAULT_TASK_TIMEOUT_MINUTES))
  # `run`'s setting flags, derived from PipelineConfig's fields as the command line's are.
  config = config_lib.from_command_line(shlex.split(run_args), "VAE_PIPELINE_ARGS").resolved()
  beam_local.skip_worker_packages_for_direct_runner()  # Airflow's task processes import this file
  os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
  pipeline = create_pipeline(
      config, metadata.sqlite_metadata_connection_config(config.metadata_path))
  return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config={
      "schedule": None if schedule.strip().lower() == NO_SCHEDULE else schedule,
      # Airflow needs a fixed start in the past; with catchup off, only the next slot runs.
      "start_date": datetime.datetime(2026, 1, 1),
      "catchup": False,
      "max_active_runs": 1,
      "tags": ["vae-pipeline"],
      "default_args": {"execution_timeout": datetime.timedelta(minutes=task_timeout_minutes),
                       "on_failure_callback": _say_why_it_failed},
  })).run(pipeline)


DAG = build_dag()
