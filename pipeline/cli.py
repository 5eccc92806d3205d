"""`vae-pipeline`: the project's one command-line tool.

    vae-pipeline run [--data PATH] [--output-dir DIR] [--epochs N] ...
    vae-pipeline runs | generate | reconstruct | encode | score | interpolate ...  (--help on each)
"""
import argparse
import sys
import time

STARTED = time.monotonic()  # first thing: the start-up time printed below includes imports

import vae_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import images
from vae_pipeline.data import sources



def image_shape(text):
  try:
    height, width, channels = (int(part) for part in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxWxC such as 28x28x1, got {text!r}") from None
  return height, width, channels


def add_run_parser(commands):
  defaults = PipelineConfig()
  run = commands.add_parser(
      "run", help="run the pipeline locally: ingest, validate, transform, train, evaluate, push",
      description="Runs the whole pipeline on this machine and prints a summary; the run's "
                  "summary and pictures go to OUTPUT_DIR/runs/.",
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
  run.add_argument("--pipeline-name", default=defaults.pipeline_name)
  run.add_argument("--image-shape", type=image_shape, default=None, metavar="HxWxC",
                   help="shape every image is brought to (C: 1 grey or 3 RGB); "
                        "default: the first image's")
  run.add_argument("--size-policy", choices=images.SIZE_POLICIES, default=defaults.size_policy,
                   help="images of another size: resize (aspect not kept), pad (fit, keep "
                        "aspect, pad with black) or reject (a bad input)")
  run.add_argument("--max-bad-fraction", type=float, default=defaults.max_bad_fraction,
                   help="skip unreadable inputs up to this share of all inputs (each is "
                        "listed in the run's bad_inputs.csv); 0: any bad input stops the run")
  run.add_argument("--image-feature", default=defaults.image_feature,
                   help="the image feature of TFRecord sources (encoded image or raw uint8 "
                        "pixel bytes)")
  run.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
  run.add_argument("--latent-dim", type=int, default=defaults.latent_dim,
                   help="size of the latent space z")
  run.add_argument("--hidden-units", type=int, default=defaults.hidden_units,
                   help="width of the encoder's Dense layer before the latent heads")
  run.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training batch")
  run.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                   help="Adam's, at the start of a cosine decay to 0 over all epochs")
  run.add_argument("--beta", type=float, default=defaults.beta, help="weight of the KL term")
  run.add_argument("--seed", type=int, default=defaults.seed,
                   help="seeds Python, NumPy and TensorFlow")
  run.add_argument("--float32", dest="mixed_precision", action="store_false",
                   default=argparse.SUPPRESS,
                   help="train in float32 instead of mixed bfloat16 (the served model is "
                        "float32 either way)")
  run.add_argument("--max-loss", type=float, default=argparse.SUPPRESS,
                   help="bless only if the eval loss (nats per image) is at most this "
                        "(default: 0.5 x H x W x C)")
  run.add_argument("--max-loss-increase", type=float, default=defaults.max_loss_increase,
                   help="bless only if the eval loss is at most this much above the latest "
                        "blessed model's")
  run.add_argument("--beam-arg", action="append", default=argparse.SUPPRESS, metavar="ARG",
                   help="a Beam pipeline argument, repeatable, replacing the default "
                        f"{' '.join(defaults.beam_args)} (e.g. "
                        "--beam-arg=--direct_running_mode=multi_processing "
                        "--beam-arg=--direct_num_workers=8)")
  run.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                   help="re-run every component instead of reusing cached results")
  run.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks of failures")
  run.set_defaults(handler=run_command)


def run_command(args):
  import os
  config = PipelineConfig(
      pipeline_name=args.pipeline_name, output_dir=args.output_dir, data=args.data, schema=args.schema,
      image_shape=args.image_shape, size_policy=args.size_policy,
      max_bad_fraction=args.max_bad_fraction, image_feature=args.image_feature,
      latent_dim=args.latent_dim, hidden_units=args.hidden_units, epochs=args.epochs,
      mixed_precision=getattr(args, "mixed_precision", PipelineConfig.mixed_precision),
      batch_size=args.batch_size, learning_rate=args.learning_rate, beta=args.beta,
      seed=args.seed, max_loss=getattr(args, "max_loss", None), max_loss_increase=args.max_loss_increase,
      enable_cache="no_cache" not in args,
      **({"beam_args": args.beam_arg} if "beam_arg" in args else {}))
  if config.schema and not os.path.isfile(config.schema):
    raise UserError(f"--schema {config.schema}: no such file")
  try:
    config = config.resolved()
  except sources.SourceError as error:
    raise UserError(f"--data: {error}") from None
  from vae_pipeline import local_runner  # TensorFlow, TFX: seconds to import
  from vae_pipeline import summary as summary_lib
  height, width, channels = config.image_shape
  print(f"Imports and set-up: {time.monotonic() - STARTED:.1f} s", flush=True)
  print(f"Running pipeline '{config.pipeline_name}' on {config.data} ({config.source.kind}, "
        f"images brought to {height}x{width}x{channels}) -> {config.output_dir}", flush=True)
  summary = local_runner.run(config)
  print()
  print(summary_lib.format_summary(summary, config.loss_upper_bound, config.max_loss_increase))
  print(f"Run report: {local_runner.run_dir_of(summary, config)}")
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
  score = command("score", "anomaly scores (the per-image loss) as CSV, most unusual first",
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
  runs.set_defaults(handler=runs_command)


def runs_command(args):
  import os
  config = PipelineConfig(output_dir=args.output_dir, pipeline_name=args.pipeline_name)
  if not os.path.isfile(config.metadata_path):
    raise UserError(f"no runs recorded: {config.metadata_path} does not exist (run "
                    "`vae-pipeline run` first, or pass the --output-dir it used)")
  from vae_pipeline import summary as summary_lib  # TFMA (metrics): seconds to import
  store = summary_lib.open_store(config.metadata_path)
  ids = summary_lib.run_ids(store)[-args.last:]
  print(summary_lib.format_runs([summary_lib.summarize(config.metadata_path, run_id)
                                 for run_id in ids]))
  return 0


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
  parser = argparse.ArgumentParser(
      prog="vae-pipeline",
      description="Train, evaluate and push a convolutional VAE with TFX.")
  commands = parser.add_subparsers(dest="command", required=True)
  add_run_parser(commands)
  add_runs_parser(commands)
  add_model_commands(commands)
  args = parser.parse_args(argv)
  try:
    return args.handler(args)
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
