"""The commands that use a pushed model: generate, reconstruct, encode, score, interpolate,
latent-plot (vae_pipeline.client.use does the work)."""
import argparse

from vae_pipeline import config as config_lib
from vae_pipeline.cli.common import UserError, add_verbose
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import images


def add_parsers(commands):
  """Commands that use a pushed model: generate, reconstruct, encode, score, interpolate."""
  model_options = argparse.ArgumentParser(add_help=False)
  model_options.add_argument(
      "--model", default=None, metavar="PATH",
      help="a SavedModel folder; default: the latest model pushed by `run` with the same "
           "--output-dir and --pipeline-name")
  config_lib.add_flags(model_options, config_lib.RUN, names=("output_dir", "pipeline_name"))
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
    parser.set_defaults(handler=run_command, command_name=name)
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


def run_command(args):
  # pylint: disable-next=import-outside-toplevel
  from vae_pipeline.client import use  # TensorFlow: seconds to import
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
