"""Which tf.distribute strategy the Trainer trains under, read from its environment.

- `TF_CONFIG` naming more than one worker (Vertex AI and Kubeflow's TFJob set it for multi-worker
  training): MultiWorkerMirroredStrategy, synchronous data parallelism across machines.
- More than one GPU on this machine: MirroredStrategy across them.
- Otherwise (a CPU-only machine, one GPU): the default strategy, i.e. no distribution.
The batch size stays the global one; the VAE's train step averages each replica's share so that
the summed gradients equal one big batch's.
"""
import json
import os

import tensorflow as tf

DEFAULT, MIRRORED, MULTI_WORKER = "default", "mirrored", "multi_worker_mirrored"


def strategy_name(tf_config: str, gpus: int) -> str:
  """The strategy for a TF_CONFIG value (JSON or empty) and a count of local GPUs."""
  cluster = json.loads(tf_config).get("cluster", {}) if tf_config else {}
  workers = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
  if workers > 1:
    return MULTI_WORKER
  if gpus > 1:
    return MIRRORED
  return DEFAULT


def strategy() -> tf.distribute.Strategy:
  name = strategy_name(os.environ.get("TF_CONFIG", ""),
                       len(tf.config.list_physical_devices("GPU")))
  if name == MULTI_WORKER:
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == MIRRORED:
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(tf_config: str = None) -> bool:
  """Whether this process writes the model: the chief, or worker 0 when there is no chief."""
  tf_config = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
  config = json.loads(tf_config) if tf_config else {}
  task, cluster = config.get("task", {}), config.get("cluster", {})
  if not task:
    return True
  if task.get("type") == "chief":
    return True
  return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
