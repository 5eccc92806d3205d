"""Every tunable of the pipeline, in one place. The CLI and the runners only fill this in."""
import dataclasses
import os
import re
from typing import List, Optional, Tuple

from vae_pipeline import data as bundled

# Kubeflow refuses other pipeline names (e.g. `mnist_vae`).
PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

# The default absolute bound on the eval loss, per pixel and channel: an untrained model that
# predicts 0.5 everywhere scores ln 2 = 0.69 nats per pixel, a useful one far less.
DEFAULT_MAX_LOSS_PER_PIXEL = 0.5


def _absolute(path):
  """Local paths become absolute (TFX records them in ML Metadata); URIs stay as they are."""
  return path if "://" in path else os.path.abspath(path)


@dataclasses.dataclass
class PipelineConfig:
  """Paths, data, model and training settings, blessing thresholds and Beam arguments."""

  pipeline_name: str = "image-vae"
  output_dir: str = "outputs"
  data: str = dataclasses.field(default_factory=bundled.bundled_dir)
  image_shape: Tuple[int, int, int] = bundled.BUNDLED_IMAGE_SHAPE
  # A curated schema (schema.pbtxt) to validate new data against; None infers one per run,
  # which the run's own data always satisfies.
  schema: Optional[str] = None

  # Model and training.
  latent_dim: int = 2
  epochs: int = 5
  batch_size: int = 128
  learning_rate: float = 1e-3
  beta: float = 1.0
  seed: int = 42

  # Blessing: eval `loss` (nats per image) under `max_loss` (None: DEFAULT_MAX_LOSS_PER_PIXEL
  # x H x W x C) and at most `max_loss_increase` above the latest blessed model's.
  max_loss: Optional[float] = None
  max_loss_increase: float = 0.0

  # Split of the input into train and eval (hash buckets, so deterministic).
  train_buckets: int = 4
  eval_buckets: int = 1

  enable_cache: bool = True
  # In-process Beam is fastest at the bundled size (multi-processing was 2x slower).
  beam_args: List[str] = dataclasses.field(
      default_factory=lambda: ["--direct_running_mode=in_memory", "--direct_num_workers=1"])

  def __post_init__(self):
    self.image_shape = tuple(int(d) for d in self.image_shape)
    self.output_dir = _absolute(self.output_dir)
    self.data = _absolute(self.data)
    if self.schema:
      self.schema = _absolute(self.schema)
    if not PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name):
      raise ValueError(f"pipeline name {self.pipeline_name!r} must match "
                       f"{PIPELINE_NAME_PATTERN.pattern} (a Kubeflow requirement)")
    for name in ("latent_dim", "epochs", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
    if self.max_loss_increase < 0:
      raise ValueError(f"max_loss_increase must be >= 0, got {self.max_loss_increase}")

  @property
  def loss_upper_bound(self) -> float:
    if self.max_loss is not None:
      return float(self.max_loss)
    height, width, channels = self.image_shape
    return DEFAULT_MAX_LOSS_PER_PIXEL * height * width * channels

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, "pipelines", self.pipeline_name)

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, "metadata", self.pipeline_name, "metadata.sqlite")

  @property
  def serving_dir(self) -> str:
    return os.path.join(self.output_dir, "serving", self.pipeline_name)

  @property
  def runs_dir(self) -> str:
    """Where each run's summary and pictures go."""
    return os.path.join(self.output_dir, "runs", self.pipeline_name)

  def trainer_config(self) -> dict:
    """What run_fn reads from fn_args.custom_config."""
    return {"image_shape": list(self.image_shape), "latent_dim": self.latent_dim,
            "epochs": self.epochs, "batch_size": self.batch_size,
            "learning_rate": self.learning_rate, "beta": self.beta, "seed": self.seed}

  def transform_config(self) -> dict:
    return {"image_shape": list(self.image_shape)}
