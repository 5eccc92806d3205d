"""Several training processes on this machine, as a multi-worker tf.distribute cluster.

`run(target, args, count)` starts `count` processes, gives each the TF_CONFIG of one worker of a
cluster on 127.0.0.1 (free ports picked now) and calls `target(args)` in each, where
models/distribute.py then picks MultiWorkerMirroredStrategy: the code path that Vertex AI and
Kubeflow's training jobs run on several machines, here on one. Worker 0 is the chief.

Failures end in bounded time: this process watches the workers, and when one exits with an
error or is killed, it stops the others (a collective would wait for the dead one) and raises
WorkerFailed naming it. Worker 0's output goes to this process's stdout and stderr; the others'
to log files whose last lines a WorkerFailed quotes.
"""
import contextlib
import ctypes
import importlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import tensorflow as tf

from vae_pipeline.models import distribute

# Once one worker has finished, the others have this long to finish too (they end together:
# each waits for all at a last barrier, see main).
FINISH_GRACE_S = 120.0
# Lines of a failed worker's log that its error quotes.
LOG_TAIL_LINES = 8


class WorkerFailed(RuntimeError):
  """A worker exited with an error, was killed, or did not finish; the others were stopped."""

  def __init__(self, index, message):
    super().__init__(message)
    self.index = index


def free_ports(count):
  """`count` distinct TCP ports on 127.0.0.1 that nothing listens on now (held open together,
  so the kernel hands out different ones)."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
               for _ in range(count)]
    for sock in sockets:
      sock.bind(("127.0.0.1", 0))
    return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports, index):
  """The TF_CONFIG of worker `index` of a cluster of local workers on `ports`."""
  return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}})


def cpus_of_worker(index, count):
  """The CPUs worker `index` of `count` runs on: its share of this process's, none shared (when
  there are fewer CPUs than workers, one each, in turn). Pinned workers with as many threads as
  CPUs were ~10% faster than unpinned ones in benchmarks/train_speed.py (2 cores, 2 workers)."""
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < count:
    return [cpus[index % len(cpus)]]
  share = len(cpus) // count
  return cpus[index * share:(index + 1) * share]


def run(target, args, count, ports=None):
  """Calls `target(args)` in `count` local workers (target: "package.module.function", args:
  JSON-serializable); returns when every worker has returned, raises WorkerFailed otherwise."""
  ports = ports or free_ports(count)
  with tempfile.TemporaryDirectory(prefix="vae-workers-") as work:
    with open(os.path.join(work, "job.json"), "w") as f:
      json.dump({"target": target, "args": args, "parent": os.getpid(), "count": count}, f)
    workers, logs = [], []
    try:
      for index in range(count):
        if index == 0:
          output = None  # the chief's progress and warnings: where this process's go
        else:
          output = open(os.path.join(work, f"worker-{index}.log"), "wb")  # pylint: disable=R1732
          logs.append(output)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", __name__, work, str(index)], stdout=output,
            stderr=subprocess.STDOUT if output else None,
            env=dict(os.environ, TF_CONFIG=tf_config(ports, index))))
      _watch(workers, work)
    finally:
      for worker in workers:  # none is left running, whatever happened here
        if worker.poll() is None:
          worker.kill()
          worker.wait()
      for log in logs:
        log.close()


def _watch(workers, work):
  """Waits for every worker; on the first failure, stops the others and raises WorkerFailed."""
  exits = queue.Queue()  # (index, exit code), in the order the workers end
  for index, worker in enumerate(workers):
    threading.Thread(target=lambda i, w: exits.put((i, w.wait())), args=(index, worker),
                     daemon=True).start()
  deadline = None
  for _ in workers:
    try:
      index, code = exits.get(timeout=None if deadline is None
                              else max(0.0, deadline - time.monotonic()))
    except queue.Empty:
      late = next(i for i, w in enumerate(workers) if w.poll() is None)
      _stop(workers)
      raise WorkerFailed(late, f"training worker {late} of {len(workers)} did not finish "
                         f"within {FINISH_GRACE_S:.0f} s of the others; the workers were "
                         "stopped and nothing was exported") from None
    if code != 0:
      _stop(workers)
      raise WorkerFailed(index, _failure(index, len(workers), code, work))
    if deadline is None:
      deadline = time.monotonic() + FINISH_GRACE_S


def _stop(workers):
  for worker in workers:
    if worker.poll() is None:
      worker.kill()
  for worker in workers:
    worker.wait()


def _failure(index, count, code, work):
  """What went wrong with worker `index`: its error, its signal or exit code, its last lines."""
  who = f"training worker {index} of {count}" + (" (the chief)" if index == 0 else "")
  error_path = os.path.join(work, f"error-{index}.txt")
  if os.path.exists(error_path):
    with open(error_path) as f:
      what = f"failed: {f.read().strip()}"
  elif code < 0:
    what = f"was killed by signal {signal.Signals(-code).name}"
  else:
    what = f"exited with code {code}"
  message = f"{who} {what}; the other workers were stopped and nothing was exported"
  log_path = os.path.join(work, f"worker-{index}.log")
  if code > 0 and not os.path.exists(error_path) and os.path.exists(log_path):
    with open(log_path, errors="replace") as f:
      tail = [line.rstrip() for line in f.readlines()[-LOG_TAIL_LINES:] if line.strip()]
    if tail:
      message += ". Its last lines:\n  " + "\n  ".join(tail)
  return message


def _die_with_parent(parent):
  """This process gets SIGKILL when the process that started it ends (Linux), so that a killed
  Trainer leaves no worker waiting on its peers."""
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  if os.getppid() != parent:  # it ended before prctl
    os._exit(1)  # pylint: disable=protected-access


def main(work, index):
  """One worker: `python -m vae_pipeline.models.local_workers WORK INDEX`."""
  with open(os.path.join(work, "job.json")) as f:
    job = json.load(f)
  _die_with_parent(job["parent"])
  cpus = cpus_of_worker(index, job["count"])
  os.sched_setaffinity(0, cpus)
  # Before TensorFlow's first op: threads and collectives are set up once, at start-up.
  tf.config.threading.set_intra_op_parallelism_threads(len(cpus))
  tf.config.threading.set_inter_op_parallelism_threads(len(cpus))
  try:
    strategy = distribute.strategy()  # joins the cluster: fails if this worker cannot serve
    module, function = job["target"].rsplit(".", 1)
    getattr(importlib.import_module(module), function)(job["args"])
    # Every worker has finished its work (the chief its outputs) before any exits: a worker that
    # ends drops out of the cluster, and its peers' collectives would fail.
    strategy.reduce("sum", strategy.run(lambda: tf.constant(1.0)), axis=None)
  except BaseException as error:  # the parent quotes it: see _failure
    with open(os.path.join(work, f"error-{index}.txt"), "w") as f:
      f.write(f"{type(error).__name__}: {str(error)[:2000]}")
    raise


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
