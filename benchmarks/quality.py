"""Model quality, side by side: the Keras VAE example, the course lab and this project's model.

    .venv/bin/python benchmarks/quality.py [--seeds 0 1]

All train on the same 4,000 of the bundled 5,000 digits (a fixed split) and are scored on the
other 1,000: negative ELBO and importance-weighted NLL bound (64 draws of z; models/bounds.py)
in nats per image, lower is better. Ours trains exactly as the Trainer does (the default
configuration, also at latent 2; in one process: train_workers=1); the references train with
their own recipes for the same wall-clock budget as ours (whole epochs, as many as fit). Prints
one table.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import vae_pipeline  # noqa: F401,E402  (Keras 2 before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import reference_models  # noqa: E402
from vae_pipeline import data as bundled  # noqa: E402
from vae_pipeline.config import PipelineConfig  # noqa: E402
from vae_pipeline.models import bounds  # noqa: E402
from vae_pipeline.models import trainer  # noqa: E402
from vae_pipeline.models import vae as vae_lib  # noqa: E402

HELD_OUT = 1000


def load_split():
  spec = {"image": tf.io.FixedLenFeature([], tf.string)}
  files = tf.io.gfile.glob(os.path.join(bundled.bundled_dir(), "*.tfrecord.gz"))
  images = np.stack([
      tf.io.decode_png(tf.io.parse_single_example(record, spec)["image"]).numpy()
      for record in tf.data.TFRecordDataset(files, compression_type="GZIP")])
  images = images.astype(np.float32) / 255.0
  order = np.random.default_rng(0).permutation(len(images))
  return images[order[HELD_OUT:]], images[order[:HELD_OUT]]


def batches(images, batch_size, seed):
  keras.utils.set_random_seed(seed)  # a shuffle's order depends on the global seed too
  return (tf.data.Dataset.from_tensor_slices(images)
          .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))


@tf.function(autograph=False, reduce_retracing=True)
def _score_batch(encoder, decoder, images):
  mean, log_var = encoder(images, training=False)
  loss = (vae_lib.reconstruction_loss(images, decoder(mean, training=False))
          + vae_lib.kl_loss(mean, log_var))
  neg_elbo, nll_iw = bounds.image_bounds(decoder, images, mean, log_var)
  return loss, neg_elbo, nll_iw


def score(model, images, batch_size=250):
  parts = [_score_batch(model.encoder, model.decoder, tf.constant(images[i:i + batch_size]))
           for i in range(0, len(images), batch_size)]
  return [float(np.mean(np.concatenate([p[k].numpy() for p in parts]))) for k in range(3)]


class TimeBudget(keras.callbacks.Callback):
  """Stops after the epoch during which `seconds` of training ran out."""

  def __init__(self, seconds):
    super().__init__()
    self.seconds = seconds

  def on_train_begin(self, logs=None):
    self.started = time.perf_counter()
    self.epochs = 0

  def on_epoch_end(self, epoch, logs=None):
    self.epochs = epoch + 1
    if time.perf_counter() - self.started >= self.seconds:
      self.model.stop_training = True


def train_ours(train, seed, **overrides):
  config = PipelineConfig(image_shape=(28, 28, 1), seed=seed, **overrides).trainer_config()
  if config["train_workers"] != 1:  # then the Trainer trains in worker processes
    raise NotImplementedError("benchmarks/quality.py trains in one process (train_workers=1)")
  started = time.perf_counter()
  model, record = trainer.train_vae(config, batches(train, config["batch_size"], seed),
                                    verbose=0)
  seconds = time.perf_counter() - started
  steady = statistics.median(record["epoch_seconds"][1:])
  return model, seconds, config["epochs"], len(train) / steady


def train_reference(build, train, seed, budget):
  keras.utils.set_random_seed(seed)
  model = build()
  model.compile(optimizer=keras.optimizers.Adam(reference_models.LEARNING_RATE))
  timer, limit = trainer.EpochTimer(), TimeBudget(budget)
  started = time.perf_counter()
  model.fit(batches(train, reference_models.BATCH_SIZE, seed), epochs=10_000, verbose=0,
            callbacks=[timer, limit])
  seconds = time.perf_counter() - started
  return model, seconds, limit.epochs, len(train) / statistics.median(timer.seconds[1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  args = parser.parse_args()
  train, held_out = load_split()
  rows = []  # (name, seed, epochs, seconds, images/s, loss, neg_elbo, nll_iw)
  for seed in args.seeds:
    model, seconds, epochs, speed = train_ours(train, seed)
    rows.append(("ours (default, latent 16)", seed, epochs, seconds, speed, *score(model, held_out)))
    print(rows[-1], flush=True)
    budget = seconds
    model, seconds, epochs, speed = train_ours(train, seed, latent_dim=2)
    rows.append(("ours, latent 2", seed, epochs, seconds, speed, *score(model, held_out)))
    print(rows[-1], flush=True)
    for name, build in reference_models.REFERENCES.items():
      model, seconds, epochs, speed = train_reference(build, train, seed, budget)
      rows.append((name + " (latent 2)", seed, epochs, seconds, speed, *score(model, held_out)))
      print(rows[-1], flush=True)

  print(f"\nHeld-out {HELD_OUT} of the bundled digits, trained on {len(train):,}; nats per image "
        f"(lower is better), mean over seeds {args.seeds}")
  header = ("model", "epochs", "train s", "images/s", "loss (z=mean)", "neg ELBO", "nll_iw",
            "vs ours")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  names = list(dict.fromkeys(row[0] for row in rows))
  means = {name: [statistics.mean(r[i] for r in rows if r[0] == name) for i in range(2, 8)]
           for name in names}
  ours = means[names[0]][4]
  for name in names:
    epochs, seconds, speed, loss, neg_elbo, nll_iw = means[name]
    spread = [r[6] for r in rows if r[0] == name]
    print(f"| {name} | {epochs:.0f} | {seconds:.1f} | {speed:,.0f} | {loss:.1f} | "
          f"{neg_elbo:.1f} ({min(spread):.1f}-{max(spread):.1f}) | {nll_iw:.1f} | "
          f"{neg_elbo / ours:.2f}x |")


if __name__ == "__main__":
  main()
