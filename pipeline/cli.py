"""`vae-pipeline`: the project's one command-line tool.

    vae-pipeline run [--data PATH] [--output-dir DIR] [--epochs N] ...
    vae-pipeline runs | generate | reconstruct | encode | score | interpolate ...  (--help on each)
"""
import argparse
import json
import os
import re
import sys
import time

STARTED = time.monotonic()  # first thing: the start-up time printed below includes imports

import vae_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from vae_pipeline import config as config_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import images
from vae_pipeline.data import sources



def image_shape(text):
  try:
    height, width, channels = (int(part) for part in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxWxC such as 28x28x1, got {text!r}") from None
  return height, width, channels


def settings_options() -> argparse.ArgumentParser:
  """What `run` and `compile` share: the data rules, the model, training, blessing and Beam."""
  defaults = PipelineConfig()
  options = argparse.ArgumentParser(add_help=False)
  options.add_argument("--pipeline-name", default=defaults.pipeline_name)
  options.add_argument("--image-shape", type=image_shape, default=None, metavar="HxWxC",
                       help="shape every image is brought to (C: 1 grey or 3 RGB); "
                            "default: the first image's")
  options.add_argument("--size-policy", choices=images.SIZE_POLICIES,
                       default=defaults.size_policy,
                       help="images of another size: resize (aspect not kept), pad (fit, keep "
                            "aspect, pad with black) or reject (a bad input)")
  options.add_argument("--max-bad-fraction", type=float, default=defaults.max_bad_fraction,
                       help="skip unreadable inputs up to this share of all inputs (each is "
                            "listed in the run's bad_inputs.csv); 0: any bad input stops the run")
  options.add_argument("--image-feature", default=defaults.image_feature,
                       help="the image feature of TFRecord sources (encoded image or raw uint8 "
                            "pixel bytes)")
  options.add_argument("--span-window", type=int, default=defaults.span_window, metavar="N",
                       help="train on the newest N spans (span-N folders) instead of the "
                            "newest only; local and Airflow runs")
  options.add_argument("--warm-start", action="store_true", default=False,
                       help="start training from the latest blessed model's weights (same "
                            "architecture) instead of from scratch")
  options.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
  options.add_argument("--latent-dim", type=int, default=defaults.latent_dim,
                       help="size of the latent space z")
  options.add_argument("--hidden-units", type=int, default=defaults.hidden_units,
                       help="width of the encoder's Dense layer before the latent heads")
  options.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="training batch")
  options.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                       help="Adam's, at the start of a cosine decay to 0 over all epochs")
  options.add_argument("--beta", type=float, default=defaults.beta, help="weight of the KL term")
  options.add_argument("--clip-norm", type=float, default=defaults.clip_norm,
                       help="each variable's gradient is clipped to this norm")
  options.add_argument("--seed", type=int, default=defaults.seed,
                       help="seeds Python, NumPy and TensorFlow")
  options.add_argument("--float32", dest="mixed_precision", action="store_false",
                       default=argparse.SUPPRESS,
                       help="train in float32 instead of mixed bfloat16 (the served model is "
                            "float32 either way)")
  options.add_argument("--train-workers", type=int, default=defaults.train_workers,
                       metavar="N",
                       help="train in N local worker processes with tf.distribute's "
                            "MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1 ports: the "
                            "same path as a multi-machine job); 1: in the Trainer's own process")
  options.add_argument("--anomaly-quantile", type=float, default=defaults.anomaly_quantile,
                       metavar="Q",
                       help="the score signature's is_anomaly flags scores above this quantile "
                            "of the eval split's (its false-positive rate on images like them: "
                            "about 1 - Q)")
  options.add_argument("--train-buckets", type=int, default=defaults.train_buckets,
                       help="hash buckets of the input that go to the train split")
  options.add_argument("--eval-buckets", type=int, default=defaults.eval_buckets,
                       help="hash buckets of the input that go to the eval split (4 and 1: 4:1)")
  options.add_argument("--max-loss", type=float, default=argparse.SUPPRESS,
                       help="bless only if the eval loss (nats per image) is at most this "
                            "(default: 0.5 x H x W x C)")
  options.add_argument("--max-loss-increase", type=float, default=defaults.max_loss_increase,
                       help="bless only if the eval loss is at most this much above the latest "
                            "blessed model's")
  options.add_argument("--beam-preset", choices=list(config_lib.BEAM_PRESETS),
                       default=config_lib.DEFAULT_BEAM_PRESET,
                       help="Beam arguments by name (docs/deployment.md): "
                            + "; ".join(f"{name}: {' '.join(args)}"
                                        for name, args in config_lib.BEAM_PRESETS.items()))
  options.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                       help="a Beam pipeline argument, repeatable, replacing the preset's "
                            "argument of the same name (e.g. --beam-arg=--direct_num_workers=8)")
  options.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                       help="re-run every component instead of reusing cached results")
  add_verbose(options)
  return options


def add_verbose(parser):
  """--verbose, on every command: an unexpected failure's message asks for it."""
  parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                      help="show tracebacks of failures and TensorFlow's C++ errors")


def settings_of(args) -> dict:
  """PipelineConfig's keyword arguments from the settings options."""
  return dict(
      pipeline_name=args.pipeline_name, image_shape=args.image_shape,
      size_policy=args.size_policy, max_bad_fraction=args.max_bad_fraction,
      image_feature=args.image_feature, span_window=args.span_window,
      warm_start=args.warm_start, latent_dim=args.latent_dim,
      hidden_units=args.hidden_units, epochs=args.epochs,
      mixed_precision=getattr(args, "mixed_precision", PipelineConfig.mixed_precision),
      batch_size=args.batch_size, learning_rate=args.learning_rate, beta=args.beta,
      train_workers=args.train_workers, anomaly_quantile=args.anomaly_quantile,
      clip_norm=args.clip_norm, train_buckets=args.train_buckets, eval_buckets=args.eval_buckets,
      seed=args.seed, max_loss=getattr(args, "max_loss", None),
      max_loss_increase=args.max_loss_increase, enable_cache="no_cache" not in args,
      beam_args=config_lib.beam_preset_args(args.beam_preset, args.beam_arg))


def add_run_parser(commands, settings):
  defaults = PipelineConfig()
  run = commands.add_parser(
      "run", parents=[settings],
      help="run the pipeline locally: ingest, validate, transform, train, evaluate, push, report",
      description="Runs the whole pipeline on this machine and prints a summary and the path "
                  "of the run's HTML report.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  run.add_argument("--data", default=defaults.data,
                   help="a folder of images (class sub-folders become labels), IDX, NPZ or "
                        "TFRecord files, span-N sub-folders of any of them, or a dataset name "
                        "(mnist, fashion_mnist); default: the bundled 5,000 MNIST digits")
  run.add_argument("--schema", default=None,
                   help="a curated schema.pbtxt to validate the data against (e.g. a copy of "
                        "an earlier run's SchemaGen output); default: infer one from the data")
  run.add_argument("--output-dir", default=defaults.output_dir,
                   help="pipeline artifacts, ML Metadata, pushed models and run reports")
  run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another run is using the same ML Metadata store, wait up to this "
                        "long for it to finish (default: exit at once with a message)")
  run.add_argument("--orchestrator", choices=config_lib.ORCHESTRATORS,
                   default=config_lib.ORCHESTRATORS[0],
                   help="TFX's runner of the DAG: local (LocalDagRunner: one component after "
                        "another in this process) or beam (BeamDagRunner: each component a step "
                        "of a Beam pipeline); same store, cache, summary and report")
  run.set_defaults(handler=run_command)


def run_config(args) -> PipelineConfig:
  """The resolved PipelineConfig of `run`'s options (also what the Airflow DAG runs)."""
  config = PipelineConfig(output_dir=args.output_dir, data=args.data, schema=args.schema,
                          **settings_of(args))
  if config.schema and not os.path.isfile(config.schema):
    raise UserError(f"--schema {config.schema}: no such file")
  try:
    return config.resolved()
  except sources.SourceError as error:
    raise UserError(f"--data: {error}") from None


def parse(argv):
  parser = argparse.ArgumentParser(
      prog="vae-pipeline",
      description="Train, evaluate and push a convolutional VAE with TFX.")
  commands = parser.add_subparsers(dest="command", required=True)
  settings = settings_options()
  add_run_parser(commands, settings)
  add_cluster_parsers(commands, settings)
  add_runs_parser(commands)
  add_model_commands(commands)
  return parser.parse_args(argv)


def run_command(args):
  config = run_config(args)
  from vae_pipeline import local_runner  # TensorFlow, TFX: seconds to import
  from vae_pipeline import summary as summary_lib
  height, width, channels = config.image_shape
  print(f"Imports and set-up: {time.monotonic() - STARTED:.1f} s", flush=True)
  print(f"Running pipeline '{config.pipeline_name}' on {config.data} ({config.source.kind}, "
        f"images brought to {height}x{width}x{channels}) -> {config.output_dir}", flush=True)
  try:
    summary = local_runner.run(config, wait_seconds=args.wait, orchestrator=args.orchestrator)
  except (local_runner.StoreBusyError, local_runner.StoreDamagedError) as error:
    raise UserError(str(error)) from None
  print()
  print(summary_lib.format_summary(summary, config.loss_upper_bound, config.max_loss_increase))
  print(f"Run report: {local_runner.run_dir_of(summary, config)}")
  return 0


def add_cluster_parsers(commands, settings):
  """compile (no cluster needed), submit and schedule: Kubeflow Pipelines v2 and Vertex AI."""
  from vae_pipeline import kubeflow_runner as kfp_lib  # light: TFX loads when compiling
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
  from vae_pipeline import kubeflow_runner as kfp_lib
  settings = settings_of(args)
  if not settings["image_shape"]:
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
  from vae_pipeline import kubeflow_runner as kfp_lib
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


def add_model_commands(commands):
  """Commands that use a pushed model: generate, reconstruct, encode, score, interpolate."""
  defaults = PipelineConfig()
  model_options = argparse.ArgumentParser(add_help=False)
  model_options.add_argument(
      "--model", default=None, metavar="PATH",
      help="a SavedModel folder; default: the latest model pushed by `run` with the same "
           "--output-dir and --pipeline-name")
  model_options.add_argument("--output-dir", default=defaults.output_dir)
  model_options.add_argument("--pipeline-name", default=defaults.pipeline_name)
  add_verbose(model_options)
  images_options = argparse.ArgumentParser(add_help=False)
  images_options.add_argument(
      "--size-policy", choices=images.SIZE_POLICIES, default="reject",
      help="images of another size than the model's: reject them, or resize or pad them")

  def command(name, help_text, out_default, *parents):
    parser = commands.add_parser(name, help=help_text, description=help_text[0].upper()
                                 + help_text[1:] + ".", parents=[model_options, *parents],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=out_default, help="where to write the result")
    parser.set_defaults(handler=model_command, command_name=name)
    return parser

  generate = command("generate", "decode images sampled from the prior into a grid picture",
                     "generated.png")
  generate.add_argument("--count", type=int, default=20, help="how many images")
  generate.add_argument("--seed", type=int, default=0, help="the same seed, the same images")
  reconstruct = command("reconstruct", "show images above their reconstructions (up to 50)",
                        "reconstructions.png", images_options)
  reconstruct.add_argument("images", help="an image file or folder, or any --data source")
  encode = command("encode", "write each image's z_mean and z_log_var as CSV", "encoded.csv",
                   images_options)
  encode.add_argument("images", help="an image file or folder, or any --data source")
  score = command("score", "anomaly scores as CSV, most unusual first, with each image's "
                  "percentile among the eval split's and is_anomaly",
                  "scores.csv", images_options)
  score.add_argument("images", help="an image file or folder, or any --data source")
  interpolate = command("interpolate", "decode the line between two images' latent codes "
                        "into a strip picture", "interpolation.png", images_options)
  interpolate.add_argument("first", help="an image file (or the first image of a source)")
  interpolate.add_argument("second", help="another image")
  interpolate.add_argument("--steps", type=int, default=10, help="decoded points, ends included")
  latent_plot = command("latent-plot", "scatter the images' latent codes, coloured by label; "
                        "for a 2-D latent space also the decoded manifold", "latent.png",
                        images_options)
  latent_plot.add_argument("images", help="an image source; labels come from class folders or "
                                          "TFRecord `label`s (e.g. the bundled digits)")


def add_runs_parser(commands):
  defaults = PipelineConfig()
  runs = commands.add_parser(
      "runs", help="past runs from ML Metadata: when, data span, metrics, blessed, pushed where",
      description="Lists the pipeline's runs recorded in its ML Metadata store, oldest first.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  runs.add_argument("--output-dir", default=defaults.output_dir)
  runs.add_argument("--pipeline-name", default=defaults.pipeline_name)
  runs.add_argument("--last", type=int, default=20, help="show at most this many (newest)")
  add_verbose(runs)
  runs.set_defaults(handler=runs_command)


def runs_command(args):
  config = PipelineConfig(output_dir=args.output_dir, pipeline_name=args.pipeline_name)
  if not os.path.isfile(config.metadata_path):
    raise UserError(f"no runs recorded: {config.metadata_path} does not exist (run "
                    "`vae-pipeline run` first, or pass the --output-dir it used)")
  from vae_pipeline import summary as summary_lib  # TFMA (metrics): seconds to import
  problem = summary_lib.store_problem(config.metadata_path)
  if problem:
    raise UserError(problem)
  if not os.path.getsize(config.metadata_path):
    raise UserError(f"no runs recorded: {config.metadata_path} is empty (0 bytes)")
  store = summary_lib.open_store(config.metadata_path)
  ids = summary_lib.run_ids(store)[-args.last:]
  running = ids[-1] if ids and run_in_progress(config.metadata_path) else None
  print(summary_lib.format_runs([summary_lib.summarize(config.metadata_path, run_id)
                                 for run_id in ids], running=running))
  return 0


def run_in_progress(metadata_path) -> bool:
  """Whether a live process holds the store's lock (local_runner.store_lock writes its pid into
  the lock file and empties it when done; a killed run's pid is no longer alive). Reading, not
  locking: `runs` never keeps a run from starting."""
  try:
    with open(metadata_path + ".lock") as f:
      holder = f.read()
  except OSError:
    return False
  match = re.match(r"pid (\d+)", holder)
  if not match:
    return False
  try:
    os.kill(int(match.group(1)), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # alive, another user's
  return True


def model_command(args):
  from vae_pipeline import use  # TensorFlow: seconds to import
  config = PipelineConfig(output_dir=args.output_dir, pipeline_name=args.pipeline_name)
  model = use.Model(args.model or use.latest_pushed(config.serving_dir))
  name = args.command_name
  if name == "generate":
    if args.count < 1:
      raise UserError("--count must be at least 1")
    out = use.generate(model, args.count, args.seed, args.out)
  elif name == "reconstruct":
    out = use.reconstruct(model, args.images, args.out, size_policy=args.size_policy)
  elif name == "encode":
    out = use.encode(model, args.images, args.out, size_policy=args.size_policy)
  elif name == "score":
    out = use.score(model, args.images, args.out, size_policy=args.size_policy)
  elif name == "interpolate":
    out = use.interpolate(model, args.first, args.second, args.out, args.steps,
                          size_policy=args.size_policy)
  else:
    out = ", ".join(use.latent_plot(model, args.images, args.out, size_policy=args.size_policy))
  print(f"Wrote {out} (model: {model.path})")
  return 0


class UserError(Exception):
  """A mistake the user can fix; shown as one line, without a traceback."""


def main(argv=None):
  args = parse(argv)
  if "verbose" not in args and os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "2":
    # TensorFlow 2.16's wheel logs three C++ errors as it loads, on every machine ("Unable to
    # register cuDNN factory", and cuFFT's and cuBLAS's): harmless, but they read like a failure
    # before every command's output. 2 is this package's default (a user's 0 or 1 stays), and
    # TensorFlow reads the level when it loads, which is after this.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  try:
    return args.handler(args)
  except KeyboardInterrupt as error:  # Ctrl-C: say where it stopped, in one line
    if "verbose" in args:
      raise
    component = getattr(error, "component", None)
    print(f"vae-pipeline {args.command}: interrupted"
          + (f" during {component}" if component else ""), file=sys.stderr, flush=True)
    return 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
  except (UserError, ValueError) as error:
    if "verbose" in args:
      raise
    print(f"vae-pipeline {args.command}: error: {error}", file=sys.stderr)
    return 2
  except Exception as error:  # a component failed: say which and why, keep it short
    if "verbose" in args:
      raise
    print(f"vae-pipeline {args.command}: failed: {type(error).__name__}: {error}\n"
          "(run again with --verbose for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
