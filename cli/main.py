"""`vae-pipeline`: the project's one command-line tool.

    vae-pipeline run [--data PATH] [--output-dir DIR] [--epochs N] ...
    vae-pipeline runs | compile | submit | schedule | generate | reconstruct | encode | score |
                 interpolate | latent-plot ...  (--help on each)

The settings' flags come from PipelineConfig's fields (config.add_flags); the commands add only
what is not a setting of a run (`runs --last`, `--verbose`).
"""
import argparse
import os
import re
import sys
import time

STARTED = time.monotonic()  # first thing: the start-up time printed below includes imports

import vae_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from vae_pipeline import config as config_lib
from vae_pipeline.cli import cluster
from vae_pipeline.cli import model_commands
from vae_pipeline.cli.common import UserError, add_verbose
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import sources


def settings_options() -> argparse.ArgumentParser:
  """The flags `run` and `compile` share, one per setting (config.add_flags), and --verbose."""
  options = argparse.ArgumentParser(add_help=False)
  config_lib.add_flags(options, (config_lib.SHARED,))
  add_verbose(options)
  return options


def add_run_parser(commands, settings):
  run = commands.add_parser(
      "run", parents=[settings],
      help="run the pipeline locally: ingest, validate, transform, train, evaluate, push, report",
      description="Runs the whole pipeline on this machine and prints a summary and the path "
                  "of the run's HTML report.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  config_lib.add_flags(run, (config_lib.MACHINE, config_lib.LOCAL))
  run.set_defaults(handler=run_command)


def run_config(args) -> PipelineConfig:
  """The resolved PipelineConfig of `run`'s options."""
  config = PipelineConfig(**config_lib.from_flags(args, config_lib.RUN))
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
  cluster.add_parsers(commands, settings)
  add_runs_parser(commands)
  model_commands.add_parsers(commands)
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
    summary = local_runner.run(config)
  except (local_runner.StoreBusyError, local_runner.StoreDamagedError) as error:
    raise UserError(str(error)) from None
  print()
  print(summary_lib.format_summary(summary, config.loss_upper_bound, config.max_loss_increase))
  print(f"Run report: {local_runner.run_dir_of(summary, config)}")
  return 0


def add_runs_parser(commands):
  runs = commands.add_parser(
      "runs", help="past runs from ML Metadata: when, data span, metrics, blessed, pushed where",
      description="Lists the pipeline's runs recorded in its ML Metadata store, oldest first.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  config_lib.add_flags(runs, config_lib.RUN, names=("output_dir", "pipeline_name"))
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
