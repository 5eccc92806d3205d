"""Training speed: the Trainer's training loop against a plain Keras `fit` of the same model.

    .venv/bin/python benchmarks/train_speed.py [--epochs 4] [--rounds 3]

Same model (the default architecture), same 4,000 digits, same batch size, one process, run
one after the other. "plain Keras fit" is `model.fit(numpy_array)` in float32 with the stock
Keras layers (`Conv2DTranspose` among them), as a Keras user writes it; "Trainer" is
trainer.train_vae as the pipeline calls it (cached tf.data input, mixed bfloat16 where the CPU
has it, cosine schedule, `vae.FastConv2DTranspose`: same weights, same function). Steady
state, two ways: "steps only" is the median of epochs 2..N counting training steps only;
"wall" is images per second from the end of epoch 1 to the end of epoch N, counting whatever
the loop does between epochs (Keras makes a new input iterator every epoch; with
tf.data's autotuning, tearing the old one down stalled it: see trainer.without_autotuning).
Warm-up: the first epoch minus a steady one (tracing, graph optimization).
"""
import argparse
import dataclasses
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))

import vae_pipeline  # noqa: F401,E402  (Keras 2 before TensorFlow loads)
import tf_keras as keras  # noqa: E402

import quality  # noqa: E402  (the same data split)
from vae_pipeline.config import PipelineConfig  # noqa: E402
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  images, _ = quality.load_split()
  default = PipelineConfig(image_shape=(28, 28, 1), epochs=args.epochs)
  loops = [
      ("plain Keras fit (float32)", plain_fit, default),
      ("Trainer, float32", trainer_fit, dataclasses.replace(default, mixed_precision=False)),
      ("Trainer (default: mixed bfloat16)", trainer_fit, default),
  ]
  # Rounds interleave the loops, so a slow spell of this (shared) machine hits all of them.
  results = {name: [] for name, _, _ in loops}
  for round_ in range(args.rounds):
    for name, fit, config in loops:
      seconds, ended = fit(config.trainer_config(), images)
      steady = statistics.median(seconds[1:])
      wall = len(images) * (len(ended) - 1) / (ended[-1] - ended[0])
      results[name].append((len(images) / steady, wall, seconds[0] - steady, seconds[0]))
      print(round_, name, results[name][-1], flush=True)
  base = results[loops[0][0]]
  print(f"\n{len(images):,} images, batch {default.batch_size}, {args.epochs} epochs per loop and "
        f"round, {args.rounds} rounds; medians over rounds; ratio: median of per-round ratios")
  print("| loop | steady images/s, wall | vs plain fit | steady images/s, steps only | "
        "vs plain fit | first epoch s | warm-up s |")
  print("|---|---|---|---|---|---|---|")
  for name, rows in results.items():
    wall_ratio = statistics.median(row[1] / b[1] for row, b in zip(rows, base))
    steps_ratio = statistics.median(row[0] / b[0] for row, b in zip(rows, base))
    speed, wall, warm_up, first = (statistics.median(column) for column in zip(*rows))
    print(f"| {name} | {wall:,.0f} | {wall_ratio:.2f}x | {speed:,.0f} | {steps_ratio:.2f}x | "
          f"{first:.1f} | {warm_up:.1f} |")


if __name__ == "__main__":
  main()
