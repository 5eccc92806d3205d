"""Serving speed of the pushed SavedModel's signatures, called in-process.

    .venv/bin/python benchmarks/serve_speed.py [--model DIR] [--intra-op-threads N]

--model: default the latest `make run` push. Measured twice, each in a process of its own:
with TensorFlow's default intra-op threads (one per core) and with one, as a TensorFlow Serving
started with --tensorflow_intra_op_parallelism=1 runs (the setting docs/serving.md recommends for
this model). --intra-op-threads N measures that setting alone (0: TensorFlow's default).

Inputs are the bundled digits as raw tf.Examples (PNG-encoded), as a client would send them.
Prints, per signature: batch-1 latency (median and 90th percentile over 300 calls) and batch-256
throughput (images per second over 2 s of calls); then the per-call floor: the same for a
function that does nothing, which tells how fast this machine is calling TensorFlow right now.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import vae_pipeline  # noqa: F401  (Keras 2 before TensorFlow loads)
import tensorflow as tf

from vae_pipeline import data as bundled
from vae_pipeline.client import use
from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import features


def timed_calls(call, seconds=None, calls=None):
  durations = []
  started = time.perf_counter()
  while (calls and len(durations) < calls) or (seconds and time.perf_counter() - started < seconds):
    t = time.perf_counter()
    call()
    durations.append(time.perf_counter() - t)
  return durations


def call_floor(examples):
  """Median seconds of calling a do-nothing concrete function as a signature is called."""
  nothing = tf.function(lambda examples: {"examples": tf.identity(examples)})
  nothing = nothing.get_concrete_function(tf.TensorSpec([None], tf.string, name="examples"))
  for _ in range(20):
    nothing(examples=examples)
  return statistics.median(timed_calls(lambda: nothing(examples=examples), calls=300))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=None)
  parser.add_argument("--intra-op-threads", type=int, default=None,
                      help="measure only with this many intra-op threads (0: one per core)")
  args = parser.parse_args()
  if args.intra_op_threads is None:
    model_args = ["--model", args.model] if args.model else []
    for threads in (0, 1):  # fixed before TensorFlow starts: a process each
      subprocess.run([sys.executable, __file__, "--intra-op-threads", str(threads)] + model_args,
                     check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
      print()
    return
  tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
  model = use.Model(args.model or use.latest_pushed(PipelineConfig().serving_dir))
  files = tf.io.gfile.glob(os.path.join(bundled.bundled_dir(), "*.tfrecord.gz"))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
  one, many = tf.constant(records[:1]), tf.constant(records[:256])
  latent = model.latent_dim
  inputs = {
      features.SERVING_SIGNATURE: lambda n: {features.EXAMPLES_INPUT: one if n == 1 else many},
      features.SCORE_SIGNATURE: lambda n: {features.EXAMPLES_INPUT: one if n == 1 else many},
      features.ENCODE_SIGNATURE: lambda n: {features.EXAMPLES_INPUT: one if n == 1 else many},
      features.DECODE_SIGNATURE: lambda n: {features.LATENT_INPUT: tf.random.normal([n, latent])},
      features.GENERATE_SIGNATURE: lambda n: {features.COUNT_INPUT: tf.constant(n),
                                              features.SEED_INPUT: tf.constant(1, tf.int64)},
  }
  threads = {0: "one per core (default)",
             1: "1 (TensorFlow Serving: --tensorflow_intra_op_parallelism=1)"}.get(
                 args.intra_op_threads, args.intra_op_threads)
  print(f"model: {model.path}\nintra-op threads: {threads}\n")
  print("| signature | batch-1 p50 ms | batch-1 p90 ms | batch-256 images/s |")
  print("|---|---|---|---|")
  for name, make in inputs.items():
    signature = model.loaded.signatures[name]
    small, large = make(1), make(256)
    for _ in range(20):  # warm-up: first calls trace and allocate
      signature(**small)
    signature(**large)
    single = sorted(timed_calls(lambda: signature(**small), calls=300))
    batched = timed_calls(lambda: signature(**large), seconds=2.0)
    print(f"| `{name}` | {statistics.median(single) * 1e3:.2f} | "
          f"{single[int(0.9 * len(single))] * 1e3:.2f} | "
          f"{256 * len(batched) / sum(batched):,.0f} |", flush=True)
  # On a shared VM the floor moves from hour to hour, taking batch-1 latencies with it: read
  # them against it.
  print(f"\nper-call floor (a function that does nothing, batch 1, p50): "
        f"{call_floor(one) * 1e3:.2f} ms")


if __name__ == "__main__":
  main()
