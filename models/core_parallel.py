"""Training on every core of one machine: one process per core, one thread each.

On a machine with few cores this model's small ops gain little from a second thread (each op
hands part of its work to the other thread and waits for it, and the wait grows whenever a
virtual CPU is not running), while one-thread processes, one per core, each keep nearly the
speed of one alone (benchmarks/train_speed.py --ceiling). So the Trainer splits every batch over such
processes (synchronous data parallelism, as tf.distribute does across machines):
- each process holds the same model and trains on its share of every batch;
- after each step's backward pass, the processes add up their gradients (and loss sums) through
  a shared-memory file, in the same order everywhere, so every copy applies the same update and
  the weights stay identical;
- the first process validates, prints progress and saves the weights; the Trainer's own process
  waits and exports.
BatchNorm normalizes each share with its own statistics (as on several GPUs without SyncBN).
"""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import distribute
from vae_pipeline.models import vae as vae_lib

# Fewer images than this per process, and BatchNorm's per-share statistics get noisy.
MIN_IMAGES_PER_PROCESS = 64
# Starting the processes costs seconds (each imports TensorFlow) and their steady images/s are
# only somewhat above one process's, so they pay off only for long trainings (the default run
# trains on ~190,000 images). Below this (tests, a 40-image try-out) the Trainer's own process
# is faster.
MIN_IMAGES_TO_TRAIN = 100_000


def available_cores():
  """Cores this process may use: its CPU affinity, capped by a container's CPU quota."""
  cores = len(os.sched_getaffinity(0))
  for path in ("/sys/fs/cgroup/cpu.max",  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
               "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):  # cgroup v1: QUOTA, -1 for none
    try:
      with open(path) as f:
        fields = f.read().split()
      if path.endswith("cpu.max"):
        quota, period = fields
      else:
        quota = fields[0]
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
          period = f.read().strip()
      if quota not in ("max", "-1"):
        cores = min(cores, max(1, int(quota) // int(period)))
      break
    except (OSError, ValueError):
      continue
  return cores


def processes_for(batch_size, cores=None):
  """How many processes train: one per core, each with at least MIN_IMAGES_PER_PROCESS images."""
  cores = available_cores() if cores is None else cores
  return max(1, min(cores, batch_size // MIN_IMAGES_PER_PROCESS))


def processes_to_use(config, strategy_name, gpus, train_images):
  """The Trainer's process count for its config (train_processes; 0: processes_for, for a
  training on at least MIN_IMAGES_TO_TRAIN images in all)."""
  requested = config.get("train_processes", 0)
  if strategy_name != distribute.DEFAULT or gpus:
    # tf.distribute already spreads the work (machines, GPUs); a GPU wants one process.
    if requested > 1:
      raise ValueError(f"train_processes={requested} is for CPU-only machines; this Trainer "
                       f"runs with {strategy_name} and {gpus} GPU(s): use 0 or 1")
    return 1
  if requested:
    return requested
  if config["epochs"] * train_images < MIN_IMAGES_TO_TRAIN:
    return 1
  return processes_for(config["batch_size"])


class GradientExchange:
  """One process's end of the all-reduce: a shared file of [2, processes, size] float32 slots and
  a pipe to and from every other process (a byte through each says "my slot is written").

  clip_norm: each variable's summed gradient is clipped to this norm, as Keras' `clipnorm` would
  (the optimizer then clips nothing): in numpy on the sum at hand, a fraction of what Keras'
  ~100 ops for the 26 variables cost.
  """

  def __init__(self, index, count, buffer_path, size, send_fds, receive_fds, clip_norm=None):
    self.index, self.count, self.size = index, count, size
    self.clip_norm = clip_norm
    # Two sets of slots, used in turn: a process may write step t+1's gradients while another
    # still reads step t's (it cannot get further ahead: step t+1 waits for everyone's byte).
    self.buffer_path = buffer_path
    self.slots = np.memmap(buffer_path, dtype=np.float32, mode="r+", shape=(2, count, size))
    self.send_fds, self.receive_fds = send_fds, receive_fds
    self.step = 0

  def share_of(self, images):
    """This process's rows of a batch (the shares differ by at most one image)."""
    total = tf.shape(images)[0]
    return images[total * self.index // self.count:total * (self.index + 1) // self.count]

  def sum_over_processes(self, gradients, others):
    """In a traced train step: gradients and other float32 tensors (the loss sums), each summed
    over all processes; each gradient's sum then clipped to clip_norm."""
    tensors = list(gradients) + list(others)
    sums = tf.numpy_function(lambda *arrays: self._sum(arrays, clipped=len(gradients)), tensors,
                             [tf.float32] * len(tensors), stateful=True)
    sums = [tf.ensure_shape(total, t.shape) for total, t in zip(sums, tensors)]
    return sums[:len(gradients)], sums[len(gradients):]

  def report_weights(self, weights):
    """Leaves a digest of this process's trained weights, for check_same_weights."""
    digest = hashlib.sha256()
    for weight in weights:
      digest.update(np.ascontiguousarray(weight).tobytes())
    with open(weights_digest_path(self.buffer_path, self.index), "w") as f:
      f.write(digest.hexdigest())

  def _sum(self, arrays, clipped=0):
    """The sums of `arrays` over all processes; the first `clipped` of them clipped."""
    sizes = [array.size for array in arrays]
    if sum(sizes) != self.size:
      raise ValueError(f"exchange of {sum(sizes)} values, buffer of {self.size}")
    slots = self.slots[self.step % 2]
    ends = np.cumsum(sizes)
    for array, end, size in zip(arrays, ends, sizes):
      slots[self.index, end - size:end] = array.reshape(-1)
    try:
      for fd in self.send_fds:
        os.write(fd, b"x")
      for fd in self.receive_fds:
        if not os.read(fd, 1):  # end of file: the process at the other end has exited
          raise BrokenPipeError
    except BrokenPipeError:
      raise RuntimeError("another training process stopped") from None
    total = np.array(slots[0]) if self.count == 1 else np.add(slots[0], slots[1])
    for other in range(2, self.count):  # the same order in every process: identical sums
      total += slots[other]
    self.step += 1
    sums = [total[end - size:end] for end, size in zip(ends, sizes)]
    if self.clip_norm is not None:
      for part in sums[:clipped]:  # tf.clip_by_norm: part * clip / max(norm, clip)
        norm = np.sqrt(np.dot(part, part))
        if norm > self.clip_norm:
          part *= self.clip_norm / norm
    return [part.reshape(array.shape) for part, array in zip(sums, arrays)]


def weights_digest_path(buffer_path, index):
  return f"{buffer_path}.weights-{index}"


def check_same_weights(digests):
  """Every process applied the same summed updates, so their trained weights are bit-identical;
  anything else means the exchange went wrong, and the model is not to be trusted."""
  if len(set(digests)) != 1:
    raise RuntimeError(f"the training processes ended with different weights (digests "
                       f"{', '.join(d[:12] for d in digests)}): the gradient exchange failed")


def _exchange_dir(size_bytes):
  """/dev/shm when it has room to spare (a container's holds 64 MB by default), else the
  temporary folder: a memory-mapped file there works the same, through the page cache."""
  try:
    if shutil.disk_usage("/dev/shm").free > 4 * size_bytes:
      return "/dev/shm"
  except OSError:
    pass
  return None


def train_on_cores(config, train_images, eval_images=None, log_dir=None, verbose=2,
                   initial_weights=None, processes=None):
  """trainer.train_vae over `processes` one-core processes; returns (float32 model, record).

  train_images, eval_images: float32 arrays [N, H, W, C] of transformed images.
  """
  cpus = sorted(os.sched_getaffinity(0))
  count = processes or processes_for(config["batch_size"])
  with contextlib.ExitStack() as stack:
    work = stack.enter_context(tempfile.TemporaryDirectory(prefix="vae-train-"))
    paths = {name: os.path.join(work, name) for name in
             ("train.npy", "eval.npy", "weights", "record.json")}
    pipes = {(i, j): os.pipe() for i in range(count) for j in range(count) if i != j}
    fds = [dict(send_fds=[pipes[index, j][1] for j in range(count) if j != index],
                receive_fds=[pipes[i, index][0] for i in range(count) if i != index])
           for index in range(count)]
    # Started first: each imports TensorFlow (seconds) while this process prepares their work,
    # which they then read from their stdin.
    workers = []
    try:
      for index in range(count):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "vae_pipeline.models.core_parallel"], stdin=subprocess.PIPE,
            text=True, pass_fds=fds[index]["send_fds"] + fds[index]["receive_fds"],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")))
    finally:
      for read_end, write_end in pipes.values():  # only the workers hold the pipes now
        os.close(read_end)
        os.close(write_end)
    try:
      model = vae_lib.build_vae(tuple(config["image_shape"]), config["latent_dim"],
                                config["hidden_units"], beta=config["beta"])
      # The gradients of every trainable weight, then the step's two loss sums.
      size = sum(int(np.prod(w.shape)) for w in model.trainable_weights) + 2
      shape = (2, count, size)
      shared = stack.enter_context(tempfile.TemporaryDirectory(
          prefix="vae-exchange-", dir=_exchange_dir(4 * np.prod(shape))))
      paths["exchange.f32"] = os.path.join(shared, "exchange.f32")
      np.memmap(paths["exchange.f32"], np.float32, "w+", shape=shape).flush()
      np.save(paths["train.npy"], np.asarray(train_images, np.float32))
      if eval_images is not None:
        np.save(paths["eval.npy"], np.asarray(eval_images, np.float32))
      for index, worker in enumerate(workers):
        job = dict(index=index, count=count, cpu=cpus[index % len(cpus)], config=config,
                   size=size, work=work, exchange=paths["exchange.f32"],
                   verbose=verbose if index == 0 else 0,
                   log_dir=log_dir if index == 0 else None, initial_weights=initial_weights,
                   validate=eval_images is not None and index == 0, **fds[index])
        try:
          worker.stdin.write(json.dumps(job))
          worker.stdin.close()
        except BrokenPipeError:
          pass  # it has failed already: _wait_for reports it
    except BaseException:
      for worker in workers:
        worker.kill()
      raise
    _wait_for(workers, work)
    digests = []
    for index in range(count):
      with open(weights_digest_path(paths["exchange.f32"], index)) as f:
        digests.append(f.read())
    check_same_weights(digests)
    model.load_weights(paths["weights"]).assert_existing_objects_matched()
    with open(paths["record.json"]) as f:
      record = json.load(f)
  return model, record


def _wait_for(workers, work):
  """Waits for every worker; when one fails, stops the others and raises its error."""
  try:
    codes = [worker.wait() for worker in workers]
  except BaseException:
    for worker in workers:
      worker.kill()
    raise
  if any(codes):
    errors = []
    for index in range(len(workers)):
      path = os.path.join(work, f"error-{index}.txt")
      if os.path.exists(path):
        with open(path) as f:
          errors.append(f.read().strip())
    # A worker that failed first makes the others fail with "another training process stopped".
    errors.sort(key=lambda message: "another training process stopped" in message)
    raise RuntimeError(errors[0] if errors else
                       f"a training process failed (exit codes {codes}); its error is above")


def _one_thread():
  """One TensorFlow thread per process: set before its first op, or it cannot be set."""
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)


def _work(job):
  """One worker: trains on its share of every batch; the first one saves the results."""
  # Before TensorFlow's first op, which starts its threads: they inherit this.
  os.sched_setaffinity(0, {job["cpu"]})
  # Not at the top: trainer imports this module.
  from vae_pipeline.models import trainer  # pylint: disable=import-outside-toplevel
  config, work, count = job["config"], job["work"], job["count"]
  exchange = GradientExchange(job["index"], count, job["exchange"], job["size"],
                              job["send_fds"], job["receive_fds"], clip_norm=config["clip_norm"])
  keras.utils.set_random_seed(config["seed"])  # every worker shuffles the same way
  images = tf.data.Dataset.from_tensor_slices(
      np.load(os.path.join(work, "train.npy"), mmap_mode="r"))
  # A batch with fewer images than processes would leave one without any: skipped.
  train = (trainer.batches_of(images, config["batch_size"], shuffle=True, seed=config["seed"])
           .filter(lambda batch: tf.shape(batch)[0] >= count))
  evaluation = recalibration = None
  if job["validate"]:
    evaluation = trainer.batches_of(tf.data.Dataset.from_tensor_slices(
        np.load(os.path.join(work, "eval.npy"))), config["batch_size"])
  if job["index"] == 0:
    recalibration = trainer.batches_of(images, trainer.RECALIBRATION_BATCH_SIZE, shuffle=True,
                                       seed=config["seed"])
  model, record = trainer.train_vae(config, train, evaluation, recalibration,
                                    log_dir=job["log_dir"], verbose=job["verbose"],
                                    initial_weights=job["initial_weights"], exchange=exchange)
  if job["index"] == 0:
    model.save_weights(os.path.join(work, "weights"))
    with open(os.path.join(work, "record.json"), "w") as f:
      json.dump(record, f)


def main():
  _one_thread()  # this module's imports took TensorFlow's seconds
  job = json.load(sys.stdin)  # once the Trainer's process has prepared the work
  try:
    _work(job)
  except BaseException as error:  # the Trainer's process raises it: see _wait_for
    with open(os.path.join(job["work"], f"error-{job['index']}.txt"), "w") as f:
      f.write(f"{error}" if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}")
    raise
  # Everything is saved: skip TensorFlow's teardown at exit (the Trainer would wait for it).
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
