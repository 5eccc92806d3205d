"""The pipeline as an Airflow DAG: Airflow's scheduler retrains it on a cron schedule.

Put a file in Airflow's dags folder that imports this one:

    from vae_pipeline.airflow_dag import DAG  # noqa: F401

Settings come from the environment (read when Airflow parses the DAG):
  VAE_PIPELINE_ARGS      options of `vae-pipeline run`, e.g. "--data /data/digits --output-dir
                         /srv/vae --span-window 2 --epochs 25" (default: run's defaults)
  VAE_PIPELINE_SCHEDULE  a cron expression (default "0 3 * * *": 03:00 every day)

One run at a time (max_active_runs=1: two runs would write one SQLite ML Metadata store at once)
and no catch-up of missed days. Each component is one Airflow task; caching and the blessing
work as in `vae-pipeline run`. Parsing imports TFX (8-17 s): raise
AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT (docs/deployment.md).
"""
import datetime
import os
import shlex

from tfx.orchestration import metadata
from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

from vae_pipeline import beam_local
from vae_pipeline import cli
from vae_pipeline.pipeline import create_pipeline

DEFAULT_SCHEDULE = "0 3 * * *"


def build_dag(run_args=None, schedule=None):
  """The Airflow DAG for `vae-pipeline run RUN_ARGS`, scheduled by a cron expression."""
  run_args = os.environ.get("VAE_PIPELINE_ARGS", "") if run_args is None else run_args
  schedule = schedule or os.environ.get("VAE_PIPELINE_SCHEDULE", DEFAULT_SCHEDULE)
  config = cli.run_config(cli.parse(["run"] + shlex.split(run_args)))
  beam_local.skip_worker_packages_for_direct_runner()  # Airflow's task processes import this file
  os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
  pipeline = create_pipeline(
      config, metadata.sqlite_metadata_connection_config(config.metadata_path))
  return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config={
      "schedule": schedule,
      "start_date": datetime.datetime(2026, 1, 1),
      "catchup": False,
      "max_active_runs": 1,
      "tags": ["vae-pipeline"],
  })).run(pipeline)


DAG = build_dag()
