"""Every tunable of the pipeline, in one place. Each run setting is a PipelineConfig field that
carries its default, help text and check; the command line, Airflow's and Kubeflow's arguments
and the run report's settings table are derived from the fields (see "run settings" below)."""
import argparse
import dataclasses
import os
import re
from typing import List, Optional, Tuple

from vae_pipeline import data as bundled
from vae_pipeline.data import images
from vae_pipeline.data import sources

# Kubeflow refuses other pipeline names (e.g. `mnist_vae`).
PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

# The default absolute bound on the eval loss, per pixel and channel: an untrained model that
# predicts 0.5 everywhere scores ln 2 = 0.69 nats per pixel, a useful one far less.
DEFAULT_MAX_LOSS_PER_PIXEL = 0.5


# TFX's runners of the DAG on one machine (`vae-pipeline run --orchestrator`; local_runner.py):
# the first is the default.
ORCHESTRATORS = ("local", "beam")

# Beam arguments by name (`--beam-preset`). `{name}` must be given with `--beam-arg=--name=VALUE`;
# any `--beam-arg` replaces the preset's argument of the same name. docs/deployment.md: "Beam presets".
BEAM_PRESETS = {
    # One process: fastest for small data (workers cost seconds to start, each with TensorFlow).
    "in-process": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    # A worker process per core (0: one per core of the machine it runs on): many cores, big data.
    "multi-processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=0"],
    # Google Cloud Dataflow, workers running the pipeline image (Dockerfile).
    "dataflow": ["--runner=DataflowRunner", "--project={project}", "--region={region}",
                 "--temp_location={temp_location}", "--sdk_container_image={sdk_container_image}",
                 "--experiments=use_runner_v2"],
    # A Flink or Spark cluster through Beam's portable job server; workers in the image.
    "flink": ["--runner=PortableRunner", "--job_endpoint={job_endpoint}",
              "--environment_type=DOCKER", "--environment_config={environment_config}"],
    "spark": ["--runner=PortableRunner", "--job_endpoint={job_endpoint}",
              "--environment_type=DOCKER", "--environment_config={environment_config}"],
}
DEFAULT_BEAM_PRESET = "in-process"


def beam_preset_args(preset=DEFAULT_BEAM_PRESET, extra=()) -> List[str]:
  """The preset's arguments with `extra` (`--name=value` strings) replacing or adding to them."""
  if preset not in BEAM_PRESETS:
    raise ValueError(f"unknown Beam preset {preset!r}; choose from {', '.join(BEAM_PRESETS)}")
  name = lambda arg: arg.split("=", 1)[0]
  given = {name(arg) for arg in extra}
  merged = [arg for arg in BEAM_PRESETS[preset] if name(arg) not in given] + list(extra)
  missing = [arg for arg in merged if "{" in arg]
  if missing:
    raise ValueError(f"Beam preset {preset!r} needs " + ", ".join(
        f"--beam-arg={name(arg)}=VALUE" for arg in missing))
  return merged


def _absolute(path):
  """Local paths become absolute (TFX records them in ML Metadata); URIs stay as they are."""
  return path if "://" in path else os.path.abspath(path)


# ----------------------------------------------------------------------------- run settings
#
# Each run setting is one PipelineConfig field made with `setting(...)`: its default, its help
# text, its check and the components that read it. Everything else is derived from the field:
#   the command-line flag      add_flags, from_flags (`run` and `compile`; Airflow's
#                              VAE_PIPELINE_ARGS is parsed by the same flags, `docs/operations.md`
#                              lists them: cli/options_doc.py)
#   the check                  PipelineConfig.__post_init__
#   the components' arguments  component_config: custom_config of ExampleGen, Transform and
#                              the Trainer, on every orchestrator (compiled into Kubeflow's spec)
#   the run report's table     settings_rows, handed to the RunReport component

# Which commands take a setting as a flag.
SHARED = "shared"  # `run`, `compile` and Airflow's VAE_PIPELINE_ARGS; listed in the run report
MACHINE = "machine"  # `run` and VAE_PIPELINE_ARGS: paths on the machine that runs the DAG
LOCAL = "local"  # `run` only: how it runs the DAG in its own process
SCHEDULED = (SHARED, MACHINE)  # what the Airflow DAG takes
RUN = (SHARED, MACHINE, LOCAL)  # what `vae-pipeline run` takes: every setting
# The components whose custom_config carries a setting (component_config).
EXAMPLE_GEN, TRANSFORM, TRAINER = "ExampleGen", "Transform", "Trainer"


# pylint: disable-next=redefined-builtin
def setting(default=dataclasses.MISSING, *, help, check=None, commands=SHARED, flag=None,
            parse=None, metavar=None, choices=None, to=(), in_report=True,
            default_factory=dataclasses.MISSING):
  """A PipelineConfig field that is a run setting.

  help: what it does: the flag's help and the report's words.
  check: a value's problem in words ("must be at least 1, got 0"), or None.
  flag: the option's name (default `--field-name`); a bool flag turns its default over. Or a
    pair of functions for a setting given by several flags: (add them to a parser, the value
    from the parsed arguments).
  parse: text to value (default: the default's type).
  to: the components whose custom_config carries it.
  in_report: False for settings that change how a run goes, not what it makes (the report
    would otherwise re-run whenever they change)."""
  return dataclasses.field(default=default, default_factory=default_factory, metadata=dict(
      help=help, check=check, commands=commands, flag=flag, parse=parse, metavar=metavar,
      choices=choices, to=to, in_report=in_report))


def at_least(low):
  return lambda value: None if value >= low else f"must be at least {low}, got {value}"


def positive(value):
  return None if value > 0 else f"must be positive, got {value}"


def within(low, high, low_included=False):
  """A check that a value lies in (low, high), or [low, high) with low_included."""
  def check(value):
    inside = (low <= value if low_included else low < value) and value < high
    return None if inside else (f"must be in {'[' if low_included else '('}{low:g}, {high:g}), "
                                f"got {value}")
  return check


def one_of(choices):
  return lambda value: None if value in choices else (
      f"must be one of {', '.join(choices)}, got {value!r}")


def parse_image_shape(text) -> Tuple[int, int, int]:
  """`28x28x1` -> (28, 28, 1)."""
  try:
    height, width, channels = (int(part) for part in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxWxC such as 28x28x1, got {text!r}") from None
  return height, width, channels


def _pipeline_name_check(name):
  return None if PIPELINE_NAME_PATTERN.fullmatch(name) else (
      f"must match {PIPELINE_NAME_PATTERN.pattern} (a Kubeflow requirement), got {name!r}")


def _existing_file(path):
  """Local files are looked for now; a URI is read when the pipeline runs."""
  return None if path is None or "://" in path or os.path.isfile(path) else (
      f"names no file: {path}")


def _add_beam_flags(parser):
  """beam_args has two flags: a preset by name and arguments that replace the preset's."""
  parser.add_argument("--beam-preset", choices=list(BEAM_PRESETS), default=DEFAULT_BEAM_PRESET,
                      help="Beam arguments by name (docs/deployment.md): " + "; ".join(
                          f"{name}: {' '.join(args)}" for name, args in BEAM_PRESETS.items()))
  parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                      help="a Beam pipeline argument, repeatable, replacing the preset's "
                           "argument of the same name (e.g. --beam-arg=--direct_num_workers=8)")


@dataclasses.dataclass
class PipelineConfig:
  """Paths, data, model and training settings, blessing thresholds and Beam arguments."""

  pipeline_name: str = setting(
      "image-vae", check=_pipeline_name_check,
      help="names the pipeline's ML Metadata store, artifacts, pushed models and reports")
  output_dir: str = setting(
      "outputs", commands=MACHINE,
      help="pipeline artifacts, ML Metadata, pushed models and run reports")
  data: str = setting(
      default_factory=bundled.bundled_dir, commands=MACHINE,
      help="a folder of images (class sub-folders become labels), IDX, NPZ or TFRecord files, "
           "span-N sub-folders of any of them, or a dataset name (mnist, fashion_mnist); "
           "default: the bundled 5,000 MNIST digits")
  # None: the first image's shape (see `resolved`).
  image_shape: Optional[Tuple[int, int, int]] = setting(
      None, parse=parse_image_shape, metavar="HxWxC", to=(EXAMPLE_GEN, TRANSFORM, TRAINER),
      help="shape every image is brought to (C: 1 grey or 3 RGB); default: the first image's")
  size_policy: str = setting(
      images.DEFAULT_SIZE_POLICY, choices=images.SIZE_POLICIES,
      check=one_of(images.SIZE_POLICIES), to=(EXAMPLE_GEN,),
      help="images of another size: resize (aspect not kept), pad (fit, keep aspect, pad with "
           "black) or reject (a bad input)")
  max_bad_fraction: float = setting(
      0.0, check=within(0.0, 1.0, low_included=True), to=(EXAMPLE_GEN,),
      help="skip unreadable inputs up to this share of all inputs (each is listed in the run's "
           "bad_inputs.csv); 0: any bad input stops the run")
  image_feature: str = setting(
      "image", to=(EXAMPLE_GEN,),
      help="the image feature of TFRecord sources (encoded image or raw uint8 pixel bytes)")
  # None infers a schema per run, which the run's own data always satisfies.
  schema: Optional[str] = setting(
      None, commands=MACHINE, check=_existing_file,
      help="a curated schema.pbtxt to validate the data against (e.g. a copy of an earlier "
           "run's SchemaGen output); default: infer one from the data")

  # Model and training (benchmarks/quality.py measures these choices).
  latent_dim: int = setting(16, check=at_least(1), to=(TRAINER,),
                            help="size of the latent space z")
  # The course lab's 20 limits its quality; in benchmarks/quality.py 256 beats 512.
  hidden_units: int = setting(
      256, check=at_least(1), to=(TRAINER,),
      help="width of the encoder's Dense layer before the latent heads")
  # benchmarks/quality.py: the quality target within its time budget.
  epochs: int = setting(48, check=at_least(1), to=(TRAINER,), help="training epochs")
  batch_size: int = setting(128, check=at_least(1), to=(TRAINER,), help="training batch")
  learning_rate: float = setting(
      5e-3, check=positive, to=(TRAINER,),
      help="Adam's, at the start of a cosine decay to 0 over all epochs")
  clip_norm: float = setting(
      1.0, check=positive, to=(TRAINER,),
      help="each variable's gradient is clipped to this norm (Keras clipnorm)")
  beta: float = setting(1.0, to=(TRAINER,), help="weight of the KL term")
  seed: int = setting(42, to=(TRAINER,), help="seeds Python, NumPy and TensorFlow")
  # Weights, heads and the served model stay float32.
  mixed_precision: bool = setting(
      True, flag="--float32", to=(TRAINER,),
      help="train in float32 instead of mixed bfloat16 (where the CPU or GPU has it; the "
           "served model is float32 either way)")
  # benchmarks/train_speed.py: one process is faster on a machine with few cores.
  train_workers: int = setting(
      1, check=at_least(1), metavar="N", to=(TRAINER,),
      help="train in N local worker processes with tf.distribute's MultiWorkerMirroredStrategy "
           "(TF_CONFIG on 127.0.0.1 ports: the same path as a multi-machine job); 1: in the "
           "Trainer's own process, as a cluster's TF_CONFIG (Vertex AI, Kubeflow) needs")
  anomaly_quantile: float = setting(
      0.99, check=within(0.0, 1.0), metavar="Q", to=(TRAINER,),
      help="the score signature's is_anomaly flags scores above this quantile of the eval "
           "split's (its false-positive rate on images like them: about 1 - Q)")

  # Blessing (models/evaluation.py), eval `loss` in nats per image.
  max_loss: Optional[float] = setting(
      None, parse=float,
      help="bless only if the eval loss (nats per image) is at most this (default: "
           f"{DEFAULT_MAX_LOSS_PER_PIXEL} x H x W x C)")
  max_loss_increase: float = setting(
      0.0, check=at_least(0.0),
      help="bless only if the eval loss is at most this much above the latest blessed model's")

  # Not on Kubeflow (see resolvers.py).
  span_window: int = setting(
      1, check=at_least(1), metavar="N",
      help="train on the newest N spans (span-N folders), each span's newest ingestion, instead "
           "of the newest only; evaluate on the newest span's eval split; local and Airflow runs")
  # The Trainer re-runs whenever a new model is blessed, even on the same data.
  warm_start: bool = setting(
      False, help="start training from the latest blessed model's weights (same architecture) "
                  "instead of from scratch")

  # Hash buckets, so the split is deterministic.
  train_buckets: int = setting(4, check=at_least(1),
                               help="hash buckets of the input that go to the train split")
  eval_buckets: int = setting(
      1, check=at_least(1),
      help="hash buckets of the input that go to the eval split (4 and 1: 4:1)")

  enable_cache: bool = setting(
      True, flag="--no-cache", in_report=False,
      help="re-run every component instead of reusing cached results")
  beam_args: List[str] = setting(
      default_factory=beam_preset_args, flag=(_add_beam_flags, lambda args: beam_preset_args(
          args.beam_preset, args.beam_arg)), in_report=False,
      help="Beam's pipeline arguments, from --beam-preset and --beam-arg")

  # How `vae-pipeline run` runs the DAG here; Airflow and Kubeflow orchestrate it themselves.
  orchestrator: str = setting(
      ORCHESTRATORS[0], commands=LOCAL, choices=ORCHESTRATORS, check=one_of(ORCHESTRATORS),
      help="TFX's runner of the DAG: local (LocalDagRunner: one component after another in "
           "this process) or beam (BeamDagRunner: each component a step of a Beam pipeline); "
           "same store, cache, summary and report")
  wait_seconds: float = setting(
      0.0, commands=LOCAL, flag="--wait", metavar="SECONDS", check=at_least(0.0),
      help="if another run is using the same ML Metadata store, wait up to this long for it "
           "to finish; 0: exit at once with a message")

  # Filled by `resolved()`: what ExampleGen reads.
  source: Optional[sources.Source] = None

  # TFX's Kubeflow V2 compiler knows only its two built-in resolver strategies: with this set,
  # the baseline may be the candidate itself (a cached re-run evaluates once more) and span
  # windows are refused (pipeline/resolvers.py).
  builtin_resolvers_only: bool = False

  # Where artifacts and pushed models go when not under output_dir: a cluster's bucket
  # (gs://, s3://; see kubeflow_runner.py).
  pipeline_root_uri: Optional[str] = None
  serving_uri: Optional[str] = None

  def __post_init__(self):
    if self.image_shape is not None:
      self.image_shape = tuple(int(d) for d in self.image_shape)
    self.output_dir = _absolute(self.output_dir)
    if self.data not in sources.DATASETS:
      self.data = _absolute(self.data)
    if self.schema:
      self.schema = _absolute(self.schema)
    for field in settings():
      check = field.metadata["check"]
      problem = check(getattr(self, field.name)) if check else None
      if problem:
        raise ValueError(f"{field.name} {problem}")

  def resolved(self) -> "PipelineConfig":
    """This config with its source recognized and the image shape settled (reads the data)."""
    if self.source is not None and self.image_shape is not None:
      return self
    source = self.source or sources.resolve(self.data, self.image_feature)
    shape = self.image_shape or source.natural_shape
    if shape is None:
      raise ValueError(f"cannot tell the image shape of {self.data}: none of its first "
                       f"{sources.SHAPE_TRIES:,} inputs is a readable image with a shape (raw "
                       "pixels have none); pass --image-shape HxWxC")
    from vae_pipeline.models import vae  # pylint: disable=import-outside-toplevel
    try:
      vae.check_image_shape(shape)
    except ValueError as error:
      where = "" if self.image_shape else f" (the shape of the first image, {source.shape_from})"
      raise ValueError(f"{error}{where}; pass --image-shape HxWxC to bring the images to "
                       "another size") from None
    return dataclasses.replace(self, source=source, image_shape=tuple(shape))

  @property
  def loss_upper_bound(self) -> float:
    if self.max_loss is not None:
      return float(self.max_loss)
    height, width, channels = self.image_shape
    return DEFAULT_MAX_LOSS_PER_PIXEL * height * width * channels

  @property
  def pipeline_root(self) -> str:
    return self.pipeline_root_uri or os.path.join(self.output_dir, "pipelines", self.pipeline_name)

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, "metadata", self.pipeline_name, "metadata.sqlite")

  @property
  def serving_dir(self) -> str:
    return self.serving_uri or os.path.join(self.output_dir, "serving", self.pipeline_name)

  @property
  def runs_dir(self) -> str:
    """Where each run's summary and pictures go."""
    return os.path.join(self.output_dir, "runs", self.pipeline_name)

  def component_config(self, component) -> dict:
    """The settings `component` reads (its custom_config): those whose field names it in `to`."""
    values = {field.name: getattr(self, field.name) for field in settings()
              if component in field.metadata["to"]}
    if "image_shape" in values:
      values["image_shape"] = list(values["image_shape"])  # JSON, as run_fn reads it
    return values

  def trainer_config(self) -> dict:
    """What run_fn reads from fn_args.custom_config."""
    return self.component_config(TRAINER)

  def transform_config(self) -> dict:
    return self.component_config(TRANSFORM)

  def example_gen_config(self) -> dict:
    return self.component_config(EXAMPLE_GEN)


def settings(commands=RUN) -> List[dataclasses.Field]:
  """PipelineConfig's run settings that the given commands take, in declaration order."""
  return [field for field in dataclasses.fields(PipelineConfig)
          if "help" in field.metadata and field.metadata["commands"] in commands]


def flag_of(field) -> str:
  return field.metadata["flag"] if isinstance(field.metadata["flag"], str) else (
      "--" + field.name.replace("_", "-"))


def add_flags(parser: argparse.ArgumentParser, commands=(SHARED,), names=None):
  """Adds the flags of the settings the commands take (or only `names`) to `parser`: help and
  default from the field. A None or bool default is not shown (the help says what it means)."""
  for field in settings(commands):
    if names is not None and field.name not in names:
      continue
    meta = field.metadata
    if isinstance(meta["flag"], tuple):
      meta["flag"][0](parser)
      continue
    # As declared (`outputs`, not an absolute path that differs per install; PipelineConfig
    # resolves it).
    default = (field.default if field.default is not dataclasses.MISSING
               else field.default_factory())
    common = dict(dest=field.name, help=meta["help"].replace("%", "%%"))
    if isinstance(default, bool):
      parser.add_argument(flag_of(field), action="store_false" if default else "store_true",
                          default=argparse.SUPPRESS, **common)
      continue
    parse = meta["parse"] or (str if default is None else type(default))
    parser.add_argument(flag_of(field), type=parse, choices=meta["choices"],
                        metavar=meta["metavar"],
                        default=argparse.SUPPRESS if default is None else default, **common)


def from_flags(args: argparse.Namespace, commands=(SHARED,)) -> dict:
  """PipelineConfig's keyword arguments from parsed flags (add_flags): the settings given, and
  the flags' defaults."""
  values = {}
  for field in settings(commands):
    if isinstance(field.metadata["flag"], tuple):
      values[field.name] = field.metadata["flag"][1](args)
    elif field.name in args:
      values[field.name] = getattr(args, field.name)
  return values


def settings_rows(config: PipelineConfig) -> List[List[str]]:
  """The run report's settings table: [name, flag, value, what it does] for each setting of
  `run` and `compile` that shapes what the run makes."""
  def text(value):
    if value is None:
      return "default"
    if isinstance(value, tuple):
      return "x".join(str(part) for part in value)
    return " ".join(value) if isinstance(value, list) else str(value)
  return [[field.name, flag_of(field), text(getattr(config, field.name)), field.metadata["help"]]
          for field in settings((SHARED,)) if field.metadata["in_report"]]


def from_command_line(argv, prog) -> PipelineConfig:
  """The PipelineConfig of the setting flags in `argv` that a scheduled DAG takes (Airflow's
  VAE_PIPELINE_ARGS: `run`'s but --orchestrator and --wait): not resolved, nothing read yet."""
  parser = argparse.ArgumentParser(prog=prog, add_help=False)
  add_flags(parser, SCHEDULED)
  return PipelineConfig(**from_flags(parser.parse_args(argv), SCHEDULED))
