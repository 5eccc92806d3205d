"""`compile` (no cluster needed), `submit` and `schedule`: the same pipeline on Kubeflow Pipelines
v2 and Vertex AI (vae_pipeline.kubeflow_runner)."""
import argparse
import json
import os

from vae_pipeline import config as config_lib
from vae_pipeline import kubeflow_runner as kfp_lib  # light: TFX loads when compiling
from vae_pipeline.cli.common import UserError, add_verbose


def add_parsers(commands, settings):
  """compile, submit and schedule; `settings`: the settings' flags, shared with `run`."""
  compile_ = commands.add_parser(
      "compile", parents=[settings],
      help="write the pipeline for Kubeflow Pipelines (YAML) and Vertex AI (JSON)",
      description="Compiles the same pipeline with TFX's KubeflowV2DagRunner into "
                  f"OUTPUT_DIR/{kfp_lib.PIPELINE_SPEC_FILE} (a PipelineSpec, for KFP) and "
                  f"OUTPUT_DIR/{kfp_lib.PIPELINE_JOB_FILE} (a PipelineJob, for Vertex AI). "
                  "Needs no cluster and no credentials. Paths must be gs:// or s3:// URIs.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  compile_.add_argument("--output-dir", default="kubeflow", help="where the two files go")
  compile_.add_argument("--pipeline-root", required=True, metavar="URI",
                        help="artifacts of every run (gs://bucket/path)")
  compile_.add_argument("--data", required=True, metavar="URI",
                        help="the image source ExampleGen reads; runtime parameter "
                             f"'{kfp_lib.DATA_ROOT_PARAMETER}' (change it per run)")
  compile_.add_argument("--data-pattern", default="*",
                        help="files under --data: '*' (files), '*/*' (class folders), "
                             "'span-{SPAN}/*' (a folder per span: each run reads the latest)")
  compile_.add_argument("--serving-dir", default=None, metavar="URI",
                        help="where blessed models are pushed; default PIPELINE_ROOT/serving")
  compile_.add_argument("--image", default=kfp_lib.DEFAULT_IMAGE,
                        help="the pipeline image every step runs in (see the Dockerfile)")
  compile_.set_defaults(handler=compile_command)

  target = argparse.ArgumentParser(add_help=False)
  target.add_argument("--vertex", action="store_true",
                      help="Vertex AI (the compiled JSON) instead of a KFP endpoint")
  target.add_argument("--host", default=None,
                      help="KFP API endpoint (default: kfp's in-cluster or configured host)")
  target.add_argument("--experiment", default="vae-pipeline", help="KFP experiment")
  target.add_argument("--project", default=None, help="Vertex AI: Google Cloud project")
  target.add_argument("--location", default=None, help="Vertex AI: region, e.g. europe-west4")
  target.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help=f"a runtime parameter, e.g. {kfp_lib.DATA_ROOT_PARAMETER}=gs://b/new")
  target.add_argument("--compiled", default="kubeflow",
                      help="the folder `compile` wrote")
  add_verbose(target)
  submit = commands.add_parser("submit", parents=[target], help="start one run of the compiled "
                               "pipeline on Kubeflow Pipelines or Vertex AI")
  submit.set_defaults(handler=cluster_command)
  schedule = commands.add_parser(
      "schedule", parents=[target],
      help="a recurring run of the compiled pipeline (retraining on a schedule)",
      description="KFP: create_recurring_run with a 6-field cron (seconds first; a 5-field one "
                  "gets 0 seconds), one run at a time, missed runs not caught up. Vertex AI: "
                  "PipelineJob.create_schedule with a 5-field cron.")
  schedule.add_argument("--cron", required=True,
                        help="e.g. '0 0 3 * * *' (KFP) or '0 3 * * *': 03:00 every day")
  schedule.add_argument("--name", default="vae-retraining", help="the schedule's name")
  schedule.add_argument("--catchup", action="store_true",
                        help="KFP: run the missed runs after a pause")
  schedule.set_defaults(handler=cluster_command)


def compile_command(args):
  settings = config_lib.from_flags(args)
  if not settings.get("image_shape"):
    raise UserError("--image-shape HxWxC is needed: the cluster's data is not read when "
                    "compiling")
  config = kfp_lib.cluster_config(args.pipeline_root, args.data, serving_dir=args.serving_dir,
                                  data_pattern=args.data_pattern, **settings)
  paths = kfp_lib.compile_pipeline(config, args.output_dir, image=args.image)
  height, width, channels = config.image_shape
  print(f"Pipeline '{config.pipeline_name}' ({height}x{width}x{channels} images, image "
        f"{args.image}) compiled:\n  {paths['spec']}  (Kubeflow Pipelines)\n  {paths['job']}  "
        "(Vertex AI)")
  return 0


def cluster_command(args):
  parameters = {}
  for item in args.param:
    name, equals, value = item.partition("=")
    if not equals:
      raise UserError(f"--param {item!r}: expected NAME=VALUE")
    parameters[name] = value
  spec = os.path.join(args.compiled, kfp_lib.PIPELINE_SPEC_FILE)
  job_file = os.path.join(args.compiled, kfp_lib.PIPELINE_JOB_FILE)
  if not os.path.isfile(spec if not args.vertex else job_file):
    raise UserError(f"--compiled {args.compiled}: no compiled pipeline there (run "
                    "`vae-pipeline compile` first)")
  scheduling = args.command == "schedule"
  if scheduling:  # check the expression before talking to any service
    (kfp_lib.vertex_cron if args.vertex else kfp_lib.kfp_cron)(args.cron)
  if args.vertex:
    with open(job_file) as f:
      pipeline_root = json.load(f)["runtimeConfig"]["gcsOutputDirectory"]
    job = kfp_lib.vertex_job(job_file, pipeline_root, parameters, args.project, args.location)
    if scheduling:
      made = kfp_lib.schedule_on_vertex(job, args.name, args.cron)
      print(f"Vertex AI schedule {made.resource_name} (cron {kfp_lib.vertex_cron(args.cron)})")
    else:
      job.submit()
      print(f"Vertex AI run: {job.resource_name}")
    return 0
  kfp_lib.check_open_source_kfp(spec)  # before a client: the reason, not a failing run
  import kfp  # pylint: disable=import-outside-toplevel
  client = kfp.Client(host=args.host)
  if scheduling:
    made = kfp_lib.schedule_on_kfp(client, spec, args.name, args.experiment, args.cron,
                                   parameters, catchup=args.catchup)
    print(f"KFP recurring run {made.recurring_run_id} (cron {kfp_lib.kfp_cron(args.cron)}, "
          "one at a time)")
  else:
    made = kfp_lib.submit_to_kfp(client, spec, None, args.experiment, parameters)
    print(f"KFP run {made.run_id}")
  return 0
