"""Training speed: the Trainer in one process against the ways of spreading it over processes or
devices, side by side, at the default data size and at 10x.

    .venv/bin/python benchmarks/train_speed.py [--scales 1 10] [--epochs 8 3] [--rounds 2]
        [--exchange-tree DIR] [--ceiling]

Every way runs the Trainer's own entry point, trainer.run_fn (read the transformed examples,
train, re-estimate BatchNorm, export the SavedModel, write the weights and history), in a fresh
child process that has imported TensorFlow already (as the Trainer's process has), on the same
transformed examples: the 4,000 training digits of benchmarks/quality.py, or (scale 10) those
tiled 10 times (40,000), with their 1,000 held-out digits as the eval split. Default settings
(batch 128, mixed bfloat16) but fewer epochs than the default 48 (--epochs, one per scale).

- "1 process": train_workers=1, the Trainer's process alone.
- "2 local workers (MWMS)": train_workers=2 (models/local_workers.py): two worker processes on
  127.0.0.1 under MultiWorkerMirroredStrategy, one TensorFlow thread per op each on two cores.
- "MirroredStrategy, 2 logical CPUs": one process, its CPU split into two logical devices
  (tf.config.set_logical_device_configuration), trained under MirroredStrategy over both: no
  start-up, no gRPC.
- "exchange, 2 processes": with --exchange-tree, the shared-memory gradient exchange that
  train_workers replaced (models/core_parallel.py, train_processes=2), run from a copy of that
  tree: a folder holding `vae_pipeline/` (pipeline/ with models/, data/, components/ inside).

"steady images/s": training images over the median epoch, epochs 2..N (training steps only).
"Trainer s": the whole run_fn call, start-up and export included. Rounds interleave the ways, so
a slow spell of a shared machine hits all of them; the table gives medians over rounds, and each
way's ratio to one process (median of per-round ratios).

--ceiling also runs the one-process training loop in child processes pinned to one core with one
thread, first one alone, then one per core at once: their sum is what two cores can give this
loop, the ceiling for any way of spreading one training step over both.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(__file__))

WAYS = {
    "one": "1 process",
    "workers": "2 local workers (MWMS)",
    "mirrored": "MirroredStrategy, 2 logical CPUs",
    "exchange": "exchange, 2 processes (replaced)",
}


def write_data(folder, scale):
  """Transform output and transformed train/eval examples; returns run_fn's inputs."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel
  from tensorflow_transform.tf_metadata import (  # pylint: disable=import-outside-toplevel
      dataset_metadata, metadata_io, schema_utils)
  import quality  # pylint: disable=import-outside-toplevel
  from vae_pipeline.models import features, preprocessing  # pylint: disable=C0415
  train, held_out = quality.load_split()
  shape = list(train.shape[1:])
  transform = os.path.join(folder, "transform")
  if not os.path.exists(transform):
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}))
    png = tf.io.encode_png(np.zeros(shape, np.uint8)).numpy()
    with tft_beam.Context(temp_dir=os.path.join(folder, "tft-tmp"), force_tf_compat_v1=False):
      transform_fn = (([{features.IMAGE_KEY: png}], metadata) | tft_beam.AnalyzeDataset(
          lambda inputs: preprocessing.preprocessing_fn(inputs, {"image_shape": shape})))
      _ = transform_fn | tft_beam.WriteTransformFn(transform)
    metadata_io.write_metadata(metadata, os.path.join(transform, "metadata"))

  def write(images, path):
    if not os.path.exists(path):
      with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image in images:
          writer.write(tf.train.Example(features=tf.train.Features(feature={
              features.TRANSFORMED_IMAGE_KEY: tf.train.Feature(
                  float_list=tf.train.FloatList(value=image.ravel()))})).SerializeToString())
    return path

  train_files = [write(train, os.path.join(folder, f"train-{copy}.gz")) for copy in range(scale)]
  return dict(transform_output=transform, train_files=train_files,
              eval_files=[write(held_out, os.path.join(folder, "eval.gz"))],
              train_images=len(train) * scale, image_shape=shape)


def child(way, job):
  """In a child process: one run_fn call the given way; prints {"seconds", "history"}."""
  import vae_pipeline  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from vae_pipeline.config import PipelineConfig  # pylint: disable=import-outside-toplevel
  from vae_pipeline.models import distribute, features, trainer  # pylint: disable=C0415
  if way == "mirrored":  # before TensorFlow starts
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(
        [device.name for device in tf.config.list_logical_devices("CPU")])
    distribute.strategy = lambda: mirrored
  tf.constant(0)  # TensorFlow started, as in the Trainer's process
  config = PipelineConfig(image_shape=tuple(job["image_shape"]),
                          epochs=job["epochs"]).trainer_config()
  config = dict(config, train_workers=2 if way == "workers" else 1,
                train_processes=2 if way == "exchange" else 1)
  out = job["out"]
  fn_args = types.SimpleNamespace(
      custom_config=config, transform_output=job["transform_output"],
      train_files=job["train_files"], eval_files=job["eval_files"], base_model=None,
      serving_model_dir=os.path.join(out, "model", "Format-Serving"),
      model_run_dir=os.path.join(out, "model_run"))
  os.makedirs(fn_args.model_run_dir)
  started = time.perf_counter()
  trainer.run_fn(fn_args)
  seconds = time.perf_counter() - started
  with open(os.path.join(fn_args.model_run_dir, features.HISTORY_FILE)) as f:
    history = json.load(f)
  print(json.dumps({"seconds": seconds, "history": history}))


def run_way(way, job, exchange_tree=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  if way == "exchange":
    env["PYTHONPATH"] = exchange_tree + os.pathsep + env.get("PYTHONPATH", "")
  shutil.rmtree(job["out"], ignore_errors=True)
  result = subprocess.run([sys.executable, __file__, "--child", way, json.dumps(job)],
                          stdout=subprocess.PIPE, text=True, env=env, check=False)
  if result.returncode:
    raise RuntimeError(f"{WAYS[way]} failed (its error is above)")
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  history = outcome["history"]
  steady = history["train_images"] / statistics.median(history["epoch_seconds"][1:])
  return steady, outcome["seconds"], history.get("train_workers", history.get("train_processes"))


def one_core_child(cpu, job):
  """In a child process: the one-process training loop on one core, one thread; prints its
  steady images/s."""
  os.sched_setaffinity(0, {cpu})
  import vae_pipeline  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # Before TensorFlow runs its first op, or these cannot be set.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  import quality  # pylint: disable=import-outside-toplevel
  from vae_pipeline.config import PipelineConfig  # pylint: disable=import-outside-toplevel
  from vae_pipeline.models import trainer  # pylint: disable=import-outside-toplevel
  images, _ = quality.load_split()
  config = PipelineConfig(image_shape=(28, 28, 1), epochs=job["epochs"]).trainer_config()
  _, record = trainer.train_vae(config, quality.batches(images, config["batch_size"],
                                                        config["seed"]), verbose=0)
  print(json.dumps({"images_per_s": len(images) / statistics.median(record["epoch_seconds"][1:])}))


def one_core_runs(cpus, epochs):
  """Steady images/s of one-core children started together, one per cpu in `cpus`."""
  children = [subprocess.Popen([sys.executable, __file__, "--one-core-child", str(cpu),
                                json.dumps({"epochs": epochs})], stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
              for cpu in cpus]
  outputs = [c.communicate()[0] for c in children]
  if any(c.returncode for c in children):
    raise RuntimeError("a one-core child failed (its error is above)")
  return [json.loads(output.strip().splitlines()[-1])["images_per_s"] for output in outputs]


def print_ceiling(epochs, one_process):
  cpus = sorted(os.sched_getaffinity(0))[:2]
  if len(cpus) < 2:
    print("\n--ceiling needs two cores")
    return
  alone = one_core_runs(cpus[:1], epochs)[0]
  pair = one_core_runs(cpus, epochs)
  ceiling = sum(pair)
  print(f"\nOne core, one thread (the training loop, steps only): {alone:,.0f} images/s alone; "
        f"{pair[0]:,.0f} and {pair[1]:,.0f} as two processes at once, one per core. Two-core "
        f"ceiling (their sum): {ceiling:,.0f} images/s; one process reached "
        f"{one_process / ceiling:.0%} of it.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scales", type=int, nargs="+", default=[1, 10],
                      help="data sizes, as multiples of the 4,000 training digits")
  parser.add_argument("--epochs", type=int, nargs="+", default=[8, 3],
                      help="epochs at each scale (at least 2)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--ways", nargs="+", default=["one", "workers", "mirrored", "exchange"],
                      choices=list(WAYS))
  parser.add_argument("--exchange-tree", help="a copy of the tree with models/core_parallel.py, "
                      "as a folder holding vae_pipeline/ (the exchange runs only with it)")
  parser.add_argument("--ceiling", action="store_true",
                      help="also measure the training loop on one core, alone and one per core")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--one-core-child", type=int, help=argparse.SUPPRESS)
  parser.add_argument("job", nargs="?", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child, json.loads(args.job))
    return
  if args.one_core_child is not None:
    one_core_child(args.one_core_child, json.loads(args.job))
    return
  import vae_pipeline  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  ways = [w for w in args.ways if w != "exchange" or args.exchange_tree]
  if len(args.epochs) != len(args.scales) or min(args.epochs) < 2:
    parser.error("give --epochs once per scale, each at least 2")
  results = {}  # (scale, way) -> [(steady images/s, Trainer s)]
  with tempfile.TemporaryDirectory(prefix="train-speed-") as work:
    jobs = {}
    for scale, epochs in zip(args.scales, args.epochs):
      folder = os.path.join(work, f"scale-{scale}")
      os.makedirs(folder)
      jobs[scale] = dict(write_data(folder, scale), epochs=epochs, out=os.path.join(work, "out"))
    for round_ in range(args.rounds):
      for scale in args.scales:
        for way in ways:
          steady, seconds, workers = run_way(way, jobs[scale], args.exchange_tree)
          results.setdefault((scale, way), []).append((steady, seconds))
          print(f"round {round_}, {jobs[scale]['train_images']:,} images, {WAYS[way]} "
                f"({workers}): {steady:,.0f} images/s, Trainer {seconds:.1f} s", flush=True)
  print(f"\nbatch 128, mixed bfloat16, {os.cpu_count()} CPUs; {args.rounds} rounds; medians "
        "over rounds; ratio to 1 process: median of per-round ratios")
  print("| images x epochs | way | steady images/s | vs 1 process | Trainer s | vs 1 process |")
  print("|---|---|---|---|---|---|")
  for scale, epochs in zip(args.scales, args.epochs):
    base = results[(scale, "one")]
    for way in ways:
      rows = results[(scale, way)]
      speed = statistics.median(r[0] for r in rows)
      seconds = statistics.median(r[1] for r in rows)
      speed_ratio = statistics.median(r[0] / b[0] for r, b in zip(rows, base))
      time_ratio = statistics.median(r[1] / b[1] for r, b in zip(rows, base))
      print(f"| {jobs[scale]['train_images']:,} x {epochs} | {WAYS[way]} | {speed:,.0f} | "
            f"{speed_ratio:.2f}x | {seconds:.1f} | {time_ratio:.2f}x |")
  if args.ceiling:
    print_ceiling(args.epochs[0],
                  statistics.median(r[0] for r in results[(args.scales[0], "one")]))


if __name__ == "__main__":
  main()
