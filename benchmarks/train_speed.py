"""Training speed: the Trainer's training loop against a plain Keras `fit` of the same model.

    .venv/bin/python benchmarks/train_speed.py [--epochs 4] [--rounds 3] [--ceiling]

Same model (the default architecture), same 4,000 digits, same batch size, run one after the
other. "plain Keras fit" is `model.fit(numpy_array)` in float32 with the stock Keras layers
(`Conv2DTranspose` among them), as a Keras user writes it, in this process. "Trainer, one
process" is trainer.train_vae in this process (cached tf.data input, mixed bfloat16 where the
CPU has it, cosine schedule, `vae.FastConv2DTranspose`: same weights, same function). "Trainer
(default)" is what the pipeline's Trainer runs on a CPU-only machine: the same loop in one
one-thread process per core, each on its share of every batch (core_parallel.train_on_cores).
Steady state, two ways: "steps only" is the median of epochs 2..N counting training steps only;
"wall" is images per second from the end of epoch 1 to the end of epoch N, counting whatever
the loop does between epochs (Keras makes a new input iterator every epoch; with
tf.data's autotuning, tearing the old one down stalled it: see trainer.without_autotuning).
Warm-up: the first epoch minus a steady one (tracing, graph optimization). "Call s": the whole
call, start-up included (for the default, starting its processes and their imports).

--ceiling also runs the Trainer's loop in child processes pinned to one core with one thread,
first one alone, then one per core at once. When the pair keeps the lone speed, the cores do
not share execution units, and their sum is what two cores can give this loop: the ceiling
that any way of spreading one training step over both cores is measured against.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import vae_pipeline  # noqa: F401,E402  (Keras 2 before TensorFlow loads)
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import quality  # noqa: E402  (the same data split)
from vae_pipeline.config import PipelineConfig  # noqa: E402
from vae_pipeline.models import core_parallel  # noqa: E402
from vae_pipeline.models import trainer  # noqa: E402
from vae_pipeline.models import vae as vae_lib  # noqa: E402


def plain_fit(config, images):
  keras.utils.set_random_seed(config["seed"])
  model = vae_lib.build_vae(tuple(config["image_shape"]), config["latent_dim"],
                            config["hidden_units"], conv_transpose=keras.layers.Conv2DTranspose)
  model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
  timer = trainer.EpochTimer()
  model.fit(images, batch_size=config["batch_size"], epochs=config["epochs"], verbose=0,
            callbacks=[timer])
  return timer.seconds, timer.ended


def trainer_fit(config, images):
  _, record = trainer.train_vae(config, quality.batches(images, config["batch_size"],
                                                        config["seed"]), verbose=0)
  return record["epoch_seconds"], record["epoch_ended"]


def trainer_on_cores(config, images):
  _, record = core_parallel.train_on_cores(config, images, verbose=0)
  return record["epoch_seconds"], record["epoch_ended"]


def one_core_child(cpu, epochs):
  """In a child process: the Trainer's loop on one core, one thread; prints its steady images/s."""
  os.sched_setaffinity(0, {cpu})
  # Before TensorFlow runs its first op, or these cannot be set.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  images, _ = quality.load_split()
  seconds, _ = trainer_fit(PipelineConfig(image_shape=(28, 28, 1), epochs=epochs)
                           .trainer_config(), images)
  print(json.dumps({"images_per_s": len(images) / statistics.median(seconds[1:])}))


def one_core_runs(cpus, epochs):
  """Steady images/s of one-core children started together, one per cpu in `cpus`."""
  children = [subprocess.Popen([sys.executable, __file__, "--one-core-child", str(cpu),
                                "--epochs", str(epochs)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
              for cpu in cpus]
  outputs = [child.communicate()[0] for child in children]
  if any(child.returncode for child in children):
    raise RuntimeError("a one-core child failed (its error is above)")
  return [json.loads(output.strip().splitlines()[-1])["images_per_s"] for output in outputs]


def print_ceiling(epochs, plain, one_process, on_cores):
  cpus = sorted(os.sched_getaffinity(0))[:2]
  if len(cpus) < 2:
    print("\n--ceiling needs two cores")
    return
  alone = one_core_runs(cpus[:1], epochs)[0]
  pair = one_core_runs(cpus, epochs)
  ceiling = sum(pair)
  print(f"\nOne core, one thread (the Trainer's loop, steps only): {alone:,.0f} images/s alone; "
        f"{pair[0]:,.0f} and {pair[1]:,.0f} as two processes at once, one per core.")
  print(f"Two-core ceiling (their sum): {ceiling:,.0f} images/s = {ceiling / plain:.2f}x plain "
        f"fit; the Trainer reached {on_cores / ceiling:.0%} of it ({one_process / ceiling:.0%} in "
        "one process).")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--ceiling", action="store_true",
                      help="also measure the Trainer's loop on one core, alone and one per core")
  parser.add_argument("--one-core-child", type=int, metavar="CPU", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one_core_child is not None:
    one_core_child(args.one_core_child, args.epochs)
    return
  images, _ = quality.load_split()
  default = PipelineConfig(image_shape=(28, 28, 1), epochs=args.epochs)
  processes = core_parallel.processes_for(default.batch_size)
  loops = [
      ("plain Keras fit (float32)", plain_fit, default),
      ("Trainer, one process (mixed bfloat16)", trainer_fit, default),
      (f"Trainer (default: {processes} one-thread processes, mixed bfloat16)", trainer_on_cores,
       default),
  ]
  # Rounds interleave the loops, so a slow spell of this (shared) machine hits all of them.
  results = {name: [] for name, _, _ in loops}
  for round_ in range(args.rounds):
    for name, fit, config in loops:
      started = time.perf_counter()
      seconds, ended = fit(config.trainer_config(), images)
      call = time.perf_counter() - started
      steady = statistics.median(seconds[1:])
      wall = len(images) * (len(ended) - 1) / (ended[-1] - ended[0])
      results[name].append((len(images) / steady, wall, seconds[0] - steady, seconds[0], call))
      print(round_, name, results[name][-1], flush=True)
  base = results[loops[0][0]]
  print(f"\n{len(images):,} images, batch {default.batch_size}, {args.epochs} epochs per loop and "
        f"round, {args.rounds} rounds; medians over rounds; ratio: median of per-round ratios")
  print("| loop | steady images/s, wall | vs plain fit | steady images/s, steps only | "
        "vs plain fit | first epoch s | warm-up s | call s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, rows in results.items():
    wall_ratio = statistics.median(row[1] / b[1] for row, b in zip(rows, base))
    steps_ratio = statistics.median(row[0] / b[0] for row, b in zip(rows, base))
    speed, wall, warm_up, first, call = (statistics.median(column) for column in zip(*rows))
    print(f"| {name} | {wall:,.0f} | {wall_ratio:.2f}x | {speed:,.0f} | {steps_ratio:.2f}x | "
          f"{first:.1f} | {warm_up:.1f} | {call:.1f} |")
  if args.ceiling:
    def steps_only(name):
      return statistics.median(row[0] for row in results[name])
    print_ceiling(args.epochs, steps_only(loops[0][0]), steps_only(loops[1][0]),
                  steps_only(loops[2][0]))


if __name__ == "__main__":
  main()
