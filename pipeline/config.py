"""Every tunable of the pipeline, in one place. The CLI and the runners only fill this in."""
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


@dataclasses.dataclass
class PipelineConfig:
  """Paths, data, model and training settings, blessing thresholds and Beam arguments."""

  pipeline_name: str = "image-vae"
  output_dir: str = "outputs"
  # A folder or file of images, IDX, NPZ or TFRecord, or a dataset name (data/sources.py).
  data: str = dataclasses.field(default_factory=bundled.bundled_dir)
  # Every image is brought to this shape; None: the first image's (see `resolved`).
  image_shape: Optional[Tuple[int, int, int]] = None
  size_policy: str = images.DEFAULT_SIZE_POLICY  # resize, pad or reject (data/images.py)
  # Share of inputs that may be skipped as unreadable (each recorded); 0: any bad input fails.
  max_bad_fraction: float = 0.0
  image_feature: str = "image"  # the image feature of TFRecord sources
  # A curated schema (schema.pbtxt) to validate new data against; None infers one per run,
  # which the run's own data always satisfies.
  schema: Optional[str] = None

  # Model and training (benchmarks/quality.py measures these choices).
  latent_dim: int = 16
  # The encoder's Dense layer before the latent heads (the course lab's 20 limits its quality;
  # in benchmarks/quality.py 256 beats 512).
  hidden_units: int = 256
  epochs: int = 48  # benchmarks/quality.py: the quality target within its time budget
  batch_size: int = 128
  learning_rate: float = 5e-3  # the peak of a cosine decay to 0 over all epochs
  clip_norm: float = 1.0  # each variable's gradient is clipped to this norm (Keras clipnorm)
  beta: float = 1.0
  seed: int = 42
  # bfloat16 compute where the CPU or GPU has it (weights, heads and the served model float32).
  mixed_precision: bool = True
  # Worker processes that train together on the machine running the Trainer, each on its share
  # of every batch: a local MultiWorkerMirroredStrategy cluster (models/local_workers.py), the
  # same code path as a multi-machine job. 1: train in the Trainer's own process, the faster one
  # on a machine with few cores (benchmarks/train_speed.py). A cluster's TF_CONFIG (Vertex AI,
  # Kubeflow) needs 1.
  train_workers: int = 1
  # The anomaly threshold: the score the eval split's images stay under in this share
  # (`is_anomaly` of the score signature; models/anomaly.py).
  anomaly_quantile: float = 0.99

  # Blessing: eval `loss` (nats per image) under `max_loss` (None: DEFAULT_MAX_LOSS_PER_PIXEL
  # x H x W x C) and at most `max_loss_increase` above the latest blessed model's.
  max_loss: Optional[float] = None
  max_loss_increase: float = 0.0

  # Train on the newest N spans (span-N folders), each span's newest ingestion; evaluate on the
  # newest span's eval split. 1: the newest span only. Not on Kubeflow (see resolvers.py).
  span_window: int = 1

  # Start training from the latest blessed model's weights (same architecture needed) instead of
  # from scratch. Its Trainer re-runs whenever a new model is blessed, even on the same data.
  warm_start: bool = False

  # Split of the input into train and eval (hash buckets, so deterministic).
  train_buckets: int = 4
  eval_buckets: int = 1

  enable_cache: bool = True
  beam_args: List[str] = dataclasses.field(default_factory=beam_preset_args)

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
    if not PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name):
      raise ValueError(f"pipeline name {self.pipeline_name!r} must match "
                       f"{PIPELINE_NAME_PATTERN.pattern} (a Kubeflow requirement)")
    for name in ("latent_dim", "hidden_units", "epochs", "batch_size", "span_window",
                 "train_buckets", "eval_buckets", "train_workers"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if not 0.0 < self.anomaly_quantile < 1.0:
      raise ValueError(f"anomaly_quantile must be in (0, 1), got {self.anomaly_quantile}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
    if self.clip_norm <= 0:
      raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
    if self.size_policy not in images.SIZE_POLICIES:
      raise ValueError(f"size policy must be one of {', '.join(images.SIZE_POLICIES)}, "
                       f"got {self.size_policy!r}")
    if not 0.0 <= self.max_bad_fraction < 1.0:
      raise ValueError(f"max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}")
    if self.max_loss_increase < 0:
      raise ValueError(f"max_loss_increase must be >= 0, got {self.max_loss_increase}")

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

  def trainer_config(self) -> dict:
    """What run_fn reads from fn_args.custom_config."""
    return {"image_shape": list(self.image_shape), "latent_dim": self.latent_dim,
            "hidden_units": self.hidden_units, "epochs": self.epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "clip_norm": self.clip_norm,
            "beta": self.beta, "seed": self.seed, "mixed_precision": self.mixed_precision,
            "train_workers": self.train_workers, "anomaly_quantile": self.anomaly_quantile}

  def transform_config(self) -> dict:
    return {"image_shape": list(self.image_shape)}

  def example_gen_config(self) -> dict:
    return {"image_shape": list(self.image_shape), "size_policy": self.size_policy,
            "max_bad_fraction": self.max_bad_fraction, "image_feature": self.image_feature}
