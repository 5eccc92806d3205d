"""Training speed: the Trainer's training loop against a plain Keras `fit` of the same model.

    .venv/bin/python benchmarks/train_speed.py [--epochs 6]

Same model (the default architecture), same 4,000 digits, same batch size, one process, run
one after the other. "plain Keras fit" is `model.fit(numpy_array)` in float32, as a Keras user
writes it; "Trainer" is trainer.train_vae as the pipeline calls it (cached tf.data input, mixed
bfloat16 where the CPU has it, cosine schedule). Steady state: median of epochs 2..N, training
steps only; warm-up: the first epoch minus a steady one (tracing, graph optimization).
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
                            config["hidden_units"])
  model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
  timer = trainer.EpochTimer()
  model.fit(images, batch_size=config["batch_size"], epochs=config["epochs"], verbose=0,
            callbacks=[timer])
  return timer.seconds


def trainer_fit(config, images):
  _, record = trainer.train_vae(config, quality.batches(images, config["batch_size"],
                                                        config["seed"]), verbose=0)
  return record["epoch_seconds"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=6)
  args = parser.parse_args()
  images, _ = quality.load_split()
  default = PipelineConfig(image_shape=(28, 28, 1), epochs=args.epochs)
  runs = [
      ("plain Keras fit (float32)", plain_fit, default),
      ("Trainer, float32", trainer_fit, dataclasses.replace(default, mixed_precision=False)),
      ("Trainer (default: mixed bfloat16)", trainer_fit, default),
  ]
  rows = []
  for name, fit, config in runs:
    seconds = fit(config.trainer_config(), images)
    steady = statistics.median(seconds[1:])
    rows.append((name, len(images) / steady, seconds[0] - steady, seconds[0]))
    print(rows[-1], flush=True)
  base = rows[0][1]
  print(f"\n{len(images):,} images, batch {default.batch_size}, {args.epochs} epochs each")
  print("| loop | steady images/s | vs plain fit | first epoch s | warm-up s |")
  print("|---|---|---|---|---|")
  for name, speed, warm_up, first in rows:
    print(f"| {name} | {speed:,.0f} | {speed / base:.2f}x | {first:.1f} | {warm_up:.1f} |")


if __name__ == "__main__":
  main()
