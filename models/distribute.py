"""Which tf.distribute strategy the Trainer trains under, read from its environment.

- `TF_CONFIG` naming more than one worker (Vertex AI and Kubeflow's TFJob set it for multi-worker
  training; `train_workers` sets it for local workers, models/local_workers.py):
  MultiWorkerMirroredStrategy, synchronous data parallelism across processes or machines.
- More than one GPU on this machine: MirroredStrategy across them.
- Otherwise (a CPU-only machine, one GPU): the default strategy, i.e. no distribution.
The batch size stays the global one; the VAE's train step divides each replica's loss sum by the
global batch size, so that the summed gradients equal one big batch's.
"""
import json
import os

import tensorflow as tf

DEFAULT, MIRRORED, MULTI_WORKER = "default", "mirrored", "multi_worker_mirrored"
# A collective (a gradient all-reduce, a barrier) that waits longer than this for its peers fails
# with DeadlineExceededError instead of hanging, e.g. when a worker is stuck. Generous: a peer may
# legitimately be seconds behind (tracing, validation, export before the last barrier).
COLLECTIVE_TIMEOUT_S = 300.0

_multi_worker = None  # one per process: collectives are configured once, at start-up


def strategy_name(tf_config: str, gpus: int) -> str:
  """The strategy for a TF_CONFIG value (JSON or empty) and a count of local GPUs."""
  if worker_count(tf_config) > 1:
    return MULTI_WORKER
  if gpus > 1:
    return MIRRORED
  return DEFAULT


def strategy() -> tf.distribute.Strategy:
  """The strategy for this process's environment. Under a multi-worker TF_CONFIG, call it before
  TensorFlow runs any op (MultiWorkerMirroredStrategy configures collectives at start-up); it is
  then created once and returned on every later call."""
  global _multi_worker  # pylint: disable=global-statement
  name = strategy_name(os.environ.get("TF_CONFIG", ""),
                       len(tf.config.list_physical_devices("GPU")))
  if name == MULTI_WORKER:
    if _multi_worker is None:
      _multi_worker = tf.distribute.MultiWorkerMirroredStrategy(
          communication_options=tf.distribute.experimental.CommunicationOptions(
              timeout_seconds=COLLECTIVE_TIMEOUT_S))
    return _multi_worker
  if name == MIRRORED:
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def _parsed(tf_config):
  tf_config = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
  return json.loads(tf_config) if tf_config else {}


def worker_count(tf_config: str = None) -> int:
  """Processes that train together: the chief and workers TF_CONFIG names (1 without one)."""
  cluster = _parsed(tf_config).get("cluster", {})
  return max(1, sum(len(cluster.get(role, [])) for role in ("chief", "worker")))


def worker_index(tf_config: str = None) -> int:
  """This process's place among them: 0 for the chief (or worker 0 when there is none)."""
  config = _parsed(tf_config)
  task, cluster = config.get("task", {}), config.get("cluster", {})
  if not task or task.get("type") == "chief":
    return 0
  return task.get("index", 0) + (1 if "chief" in cluster else 0)


def is_chief(tf_config: str = None) -> bool:
  """Whether this process writes the model: the chief, or worker 0 when there is no chief."""
  config = _parsed(tf_config)
  task = config.get("task", {})
  if not task or task.get("type") == "chief":
    return True
  return task.get("type") == "worker" and worker_index(tf_config) == 0
