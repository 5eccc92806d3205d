"""What tests/test_distribute.py runs in each local worker (and in its own process, to compare):
the Trainer's training loop on images from a .npy file, saving what it trained."""
import json
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.models import distribute
from vae_pipeline.models import trainer
from vae_pipeline.models import vae as vae_lib


def train_on(args):
  """trainer.train_vae on args["images"] (unshuffled batches of the configured size), validating
  on args["eval_images"] if given; saves the model's weights and the history record as
  `{args["out"]}/{name}-{worker index}.*`."""
  batch_size = args["config"]["batch_size"]
  batches = {name: tf.data.Dataset.from_tensor_slices(np.load(args[name])).batch(batch_size)
             for name in ("images", "eval_images") if args.get(name)}
  model, record = trainer.train_vae(args["config"], batches["images"], batches.get("eval_images"),
                                    verbose=0, initial_weights=args.get("initial_weights"))
  prefix = os.path.join(args["out"], f"{args['name']}-{distribute.worker_index()}")
  np.savez(prefix + ".npz", *model.get_weights())
  with open(prefix + ".json", "w") as f:
    json.dump(record, f)


def sgd_steps(args):
  """The VAE's own train step, compiled with plain SGD, on unshuffled batches of
  args["batch_size"] images from args["images"] (one epoch), starting from
  args["initial_weights"]; saves the weights and the logged loss like train_on."""
  with distribute.strategy().scope():
    model = vae_lib.build_vae(**args["architecture"])
    model.load_weights(args["initial_weights"]).assert_existing_objects_matched()
    model.compile(optimizer=keras.optimizers.legacy.SGD(args["learning_rate"]),
                  steps_per_execution=2)
  images = np.load(args["images"])
  batches = trainer.without_autotuning(  # the Trainer's input options (sharding)
      tf.data.Dataset.from_tensor_slices(images).batch(args["batch_size"]))
  history = model.fit(batches, epochs=1, verbose=0)
  prefix = os.path.join(args["out"], f"{args['name']}-{distribute.worker_index()}")
  np.savez(prefix + ".npz", *[w.numpy() for w in model.trainable_weights])
  with open(prefix + ".json", "w") as f:
    json.dump({k: [float(v) for v in vs] for k, vs in history.history.items()}, f)


def nothing(args):
  """A worker that only joins the cluster (and its last barrier)."""
  del args
