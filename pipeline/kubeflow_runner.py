"""Kubeflow Pipelines (v2) and Vertex AI: the same `create_pipeline`, compiled with TFX's
KubeflowV2DagRunner; submitted and scheduled through kfp's Client or Vertex AI's PipelineJob.

Compiling needs no cluster and no cloud credentials: nothing under the cloud paths is read.

The compiled pipeline runs on Vertex AI. Open-source KFP 2.x cannot run it: its backend refuses
the baseline resolver's tasks and never runs ExampleGen's driver (`open_source_kfp_problems`),
so `submit_to_kfp` and `schedule_on_kfp` say so before contacting the cluster.
tests/test_kubeflow_executed.py executes every task of the compiled files without a cluster.
"""
import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Tuple

import yaml

from vae_pipeline import __version__
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import sources

CLOUD_SCHEMES = ("gs://", "s3://")
# The image the Dockerfile builds (TFX 1.16.0's image with this project installed).
DEFAULT_IMAGE = f"vae-pipeline:{__version__}"
PIPELINE_SPEC_FILE = "pipeline.yaml"  # PipelineSpec: what open-source KFP's client uploads
PIPELINE_JOB_FILE = "pipeline_job.json"  # PipelineJob: what Vertex AI runs
# Changed per run without recompiling (`submit --param data-root=gs://...`).
DATA_ROOT_PARAMETER = "data-root"


def check_cloud_uri(option, uri):
  if not uri or not uri.startswith(CLOUD_SCHEMES):
    raise ValueError(f"{option} {uri!r}: a cluster's pods cannot read this machine's paths; "
                     f"give a {' or '.join(CLOUD_SCHEMES)} URI")
  return uri.rstrip("/")


def cluster_config(pipeline_root, data, image_shape: Tuple[int, int, int], serving_dir=None,
                   data_pattern="*", **settings) -> PipelineConfig:
  """A PipelineConfig for a cluster: cloud paths only, and a source that is not read here.

  data_pattern: the files under `data` that ExampleGen reads, e.g. `*` (files), `*/*` (class
  folders) or `span-{SPAN}/*` (a new span folder per retraining, the latest one is read).
  """
  pipeline_root = check_cloud_uri("--pipeline-root", pipeline_root)
  data = check_cloud_uri("--data", data)
  serving_dir = check_cloud_uri("--serving-dir", serving_dir or f"{pipeline_root}/serving")
  # The kind of source is recognized when ExampleGen reads it, in the cluster.
  source = sources.Source(kind="read in the cluster", input_base=data, pattern=data_pattern,
                          natural_shape=None)
  return PipelineConfig(data=data, image_shape=image_shape, source=source,
                        pipeline_root_uri=pipeline_root, serving_uri=serving_dir,
                        builtin_resolvers_only=True,
                        # The default in-process Beam: each component is its own pod.
                        **settings).resolved()


def compile_pipeline(config: PipelineConfig, output_dir, image=DEFAULT_IMAGE) -> Dict[str, str]:
  """Writes pipeline.yaml (PipelineSpec) and pipeline_job.json (PipelineJob); returns their paths."""
  # pylint: disable=import-outside-toplevel  (TFX: seconds to import)
  from tfx.orchestration import data_types
  from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kubeflow_v2

  from vae_pipeline.pipeline import create_pipeline

  data_root = data_types.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str,
                                          default=config.source.input_base)
  config = dataclasses.replace(config, source=dataclasses.replace(config.source,
                                                                  input_base=data_root))
  runner = kubeflow_v2.KubeflowV2DagRunner(
      # Schema 2.1.0: constants as `constant` and typed `parameterType`s (open-source KFP's
      # driver reads no other form), and each step gets its inputs spec, with which TFX's entry
      # point reads `parameterValues`, including the span and resolved pattern ExampleGen's
      # driver writes to the output metadata file (in 2.0.0 it reads the deprecated
      # `parameters` and depends on the platform to pass the driver's values on).
      config=kubeflow_v2.KubeflowV2DagRunnerConfig(display_name=config.pipeline_name,
                                                   default_image=image,
                                                   use_pipeline_spec_2_1=True),
      output_dir=output_dir)
  defaults = {DATA_ROOT_PARAMETER: data_root.default}
  job = runner.run(create_pipeline(config), parameter_values=defaults, write_out=False)
  job.pop("labels", None)  # TFX's telemetry labels: the machine's Python version and such
  # The job carries the defaults in its runtimeConfig; the plain spec (KFP upload) in its inputs.
  for name, value in defaults.items():
    job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"][name]["defaultValue"] = value
  os.makedirs(output_dir, exist_ok=True)
  paths = {"spec": os.path.join(output_dir, PIPELINE_SPEC_FILE),
           "job": os.path.join(output_dir, PIPELINE_JOB_FILE)}
  with open(paths["spec"], "w") as f:
    yaml.safe_dump(job["pipelineSpec"], f, sort_keys=True)
  with open(paths["job"], "w") as f:
    json.dump(job, f, sort_keys=True, indent=1)
  return paths


# ----------------------------------------------------------------------------- schedules

CRON_FIELD = re.compile(r"[0-9A-Za-z*?/,\-#LW]+")


def kfp_cron(expression: str) -> str:
  """KFP wants 6 fields, seconds first (`0 0 3 * * *`: 03:00 every day); a standard 5-field
  expression gets `0` seconds. Raises ValueError with the expected form."""
  fields = expression.split()
  if len(fields) == 5:
    fields = ["0"] + fields
  if len(fields) != 6 or not all(CRON_FIELD.fullmatch(f) for f in fields):
    raise ValueError(f"--cron {expression!r}: expected 6 fields for Kubeflow Pipelines, "
                     "'second minute hour day-of-month month day-of-week' (e.g. '0 0 3 * * *' "
                     "for 03:00 daily), or the usual 5 without seconds")
  return " ".join(fields)


def vertex_cron(expression: str) -> str:
  """Vertex AI wants the usual 5 fields (minute hour day-of-month month day-of-week), with an
  optional `TZ=Area/City ` prefix; a 6-field KFP expression loses its seconds if they are 0."""
  zone, _, rest = expression.partition(" ") if expression.startswith("TZ=") else ("", "", expression)
  fields = rest.split()
  if len(fields) == 6 and fields[0] == "0":
    fields = fields[1:]
  if len(fields) != 5 or not all(CRON_FIELD.fullmatch(f) for f in fields):
    raise ValueError(f"--cron {expression!r}: expected 5 fields for Vertex AI, "
                     "'minute hour day-of-month month day-of-week' (e.g. '0 3 * * *' for 03:00 "
                     "daily), optionally after 'TZ=Europe/Paris '")
  return (zone + " " if zone else "") + " ".join(fields)


# ----------------------------------------------------------------------------- open-source KFP

# ExampleGen input patterns that only its driver resolves (span, version, date).
_DRIVER_PATTERN = re.compile(r"\{(SPAN|VERSION|YYYY|MM|DD)(:\d+)?\}")


def open_source_kfp_problems(spec: dict) -> List[str]:
  """Why open-source Kubeflow Pipelines 2.x cannot run a compiled spec (empty: it can), as its
  backend's sources read (kubeflow/pipelines, backend/src/v2):
    * the workflow compiler refuses `resolver` executors ("resolver executors not
      implemented") and Google Cloud custom jobs, when the run is created;
    * the driver refuses constants in the deprecated `constantValue` form of schema 2.0.0 and
      component parameters with no `parameterType`;
    * no code runs a container's `lifecycle.preCacheCheck` (ExampleGen's driver): a span,
      version or date pattern would reach ExampleGen's executor unresolved.
  Vertex AI runs all of these."""
  problems = []
  executors = spec["deploymentSpec"]["executors"]
  tasks = spec["root"]["dag"]["tasks"]
  for name, task in sorted(tasks.items()):
    executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
    parameters = task.get("inputs", {}).get("parameters", {})
    if "resolver" in executor:
      problems.append(f"task {name} is a resolver (KFP: 'resolver executors not implemented')")
    if "customJob" in executor:
      problems.append(f"task {name} is a Google Cloud custom job")
    if "lifecycle" in executor.get("container", {}):
      pattern = str(parameters.get("input_config", {}).get("runtimeValue", {}))
      if _DRIVER_PATTERN.search(pattern):
        problems.append(f"task {name}'s input pattern needs its driver (lifecycle."
                        "preCacheCheck), which KFP does not run")
    for key, parameter in sorted(parameters.items()):
      if "constantValue" in parameter.get("runtimeValue", {}):
        problems.append(f"task {name}'s parameter {key} is a schema 2.0.0 constantValue")
  for name, component in sorted(spec["components"].items()):
    for key, parameter in sorted(component.get("inputDefinitions", {}).get("parameters",
                                                                           {}).items()):
      if "parameterType" not in parameter:
        problems.append(f"component {name}'s parameter {key} has no parameterType")
  return problems


def check_open_source_kfp(spec_path):
  """Raises ValueError naming why open-source KFP cannot run the compiled spec, if it cannot."""
  with open(spec_path) as f:
    problems = open_source_kfp_problems(yaml.safe_load(f))
  if problems:
    raise ValueError(f"open-source Kubeflow Pipelines cannot run {spec_path}: "
                     + "; ".join(problems) + ". Run it on Vertex AI (--vertex), which does")


def submit_to_kfp(client, spec_path, run_name, experiment, parameters: Optional[dict] = None):
  """Starts one run on open-source KFP; `client` is a kfp.Client."""
  check_open_source_kfp(spec_path)
  return client.create_run_from_pipeline_package(
      spec_path, arguments=parameters or {}, run_name=run_name, experiment_name=experiment,
      enable_caching=True)


def schedule_on_kfp(client, spec_path, job_name, experiment, cron, parameters=None,
                    catchup=False):
  """A recurring run: one at a time (max_concurrency=1), no catch-up of missed runs unless asked."""
  check_open_source_kfp(spec_path)
  experiment_id = client.create_experiment(experiment).experiment_id
  return client.create_recurring_run(
      experiment_id=experiment_id, job_name=job_name, cron_expression=kfp_cron(cron),
      max_concurrency=1, no_catchup=not catchup, pipeline_package_path=spec_path,
      params=parameters or {}, enable_caching=True)


def vertex_job(job_path, pipeline_root, parameters=None, project=None, location=None):
  """An aiplatform.PipelineJob for the compiled JSON (submit() or create_schedule() on it)."""
  from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  return aiplatform.PipelineJob(
      display_name=os.path.splitext(os.path.basename(job_path))[0], template_path=job_path,
      pipeline_root=pipeline_root, parameter_values=parameters or {}, enable_caching=True,
      project=project, location=location)


def schedule_on_vertex(job, display_name, cron):
  return job.create_schedule(display_name=display_name, cron=vertex_cron(cron),
                             max_concurrent_run_count=1)
