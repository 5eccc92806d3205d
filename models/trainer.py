"""The Trainer component's entry point: `run_fn`, named by dotted path in the pipeline."""
import json
import math
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from vae_pipeline.models import core_parallel
from vae_pipeline.models import distribute
from vae_pipeline.models import export
from vae_pipeline.models import features
from vae_pipeline.models import vae as vae_lib

# Batches used to re-estimate BatchNorm statistics after training (see recalibrate_batchnorm),
# and, for the per-epoch validation numbers only, before each validation (a cheaper estimate).
RECALIBRATION_BATCHES = 64
RECALIBRATION_BATCHES_PER_EPOCH = 4
RECALIBRATION_BATCH_SIZE = 256
# How many times a run reports its validation losses (on the last epoch among them).
VALIDATIONS = 3
# Training steps per call of Keras' train function (compile's steps_per_execution): Python's
# per-call work (callbacks, logs, the call itself) then comes once per 8 steps, a few percent
# more images/s at small batches (see VAE.make_train_function for the warm-up). Keras' callbacks see every
# 8th batch: the loss check, progress and TensorBoard.
STEPS_PER_CALL = 8


def weights_path(model_artifact_dir):
  """The Keras weights checkpoint a Model artifact carries next to its Format-Serving folder."""
  return os.path.join(model_artifact_dir, "Format-KerasWeights", "weights")


def image_dataset(file_patterns, tft_output, batch_size, shuffle=False, seed=None):
  """Transformed examples -> batches of float32 [B, H, W, C], parsed once and cached in memory."""
  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"no transformed examples found at {file_patterns}")
  spec = {features.TRANSFORMED_IMAGE_KEY:
          tft_output.transformed_feature_spec()[features.TRANSFORMED_IMAGE_KEY]}
  dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP")
             .batch(1024)
             .map(lambda s: tf.io.parse_example(s, spec)[features.TRANSFORMED_IMAGE_KEY],
                  num_parallel_calls=tf.data.AUTOTUNE)
             .unbatch()
             .cache())
  return batches_of(dataset, batch_size, shuffle, seed)


def batches_of(images, batch_size, shuffle=False, seed=None):
  """A dataset of single images in memory -> batches, reshuffled every epoch when asked."""
  if shuffle:
    images = images.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
  return images.batch(batch_size).prefetch(2)  # in memory: no need to tune more


def images_of(dataset):
  """All images of a batched dataset, in one float32 array (what train_on_cores shares)."""
  return np.concatenate(list(dataset.as_numpy_iterator()))


def without_autotuning(dataset):
  """tf.data's autotuning thread sleeps for a period that doubles up to a minute, and deleting
  an iterator waits for it: Keras stalls between epochs (a new iterator each), or once for up
  to a minute at the end of the run (one iterator). Training input is cached in memory
  and needs no tuning."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def recalibrate_batchnorm(model, images, max_batches=RECALIBRATION_BATCHES):
  """Sets every BatchNorm's moving statistics to the average over `images` on the serving path.

  With momentum 0.99 and a few hundred steps, the moving averages still remember the first,
  untrained batches, so inference-mode losses come out far worse than training-mode ones and
  vary from run to run. Re-estimating them after training (a cumulative average, on the
  deterministic z = mean path the signatures use) makes evaluation match what was learned.
  `images` must be shuffled: the variance is averaged over batches, so batches of one class
  (files are often sorted) would leave out the spread between classes (many nats worse).
  """
  layers = [layer for part in (model.encoder, model.decoder) for layer in part.layers
            if isinstance(layer, keras.layers.BatchNormalization)]
  momenta = [layer.momentum for layer in layers]
  for step, batch in enumerate(images.take(max_batches)):
    for layer in layers:
      layer.momentum = step / (step + 1.0)  # new average = old * k/(k+1) + batch / (k+1)
    mean, _ = model.encoder(batch, training=True)
    model.decoder(mean, training=True)
  for layer, momentum in zip(layers, momenta):
    layer.momentum = momentum


class RecalibrateBeforeValidation(keras.callbacks.Callback):
  """Validation losses printed per epoch then describe the model as it will be served, not one
  with stale BatchNorm statistics (those read far worse, and rise while training improves)."""

  def __init__(self, images):
    super().__init__()
    self.images = images

  def on_test_begin(self, logs=None):
    recalibrate_batchnorm(self.model, self.images, RECALIBRATION_BATCHES_PER_EPOCH)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Fails the Trainer (so nothing is exported or blessed) as soon as the loss is NaN or inf."""

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      raise RuntimeError(
          f"training diverged: the loss became {float(loss)} at batch {batch}; "
          "try a lower --learning-rate")


class EpochTimer(keras.callbacks.Callback):
  """Wall seconds of each epoch's training steps (not its validation), saved with the history;
  the first epoch includes warm-up. `ended`: seconds from the start of training to each epoch's
  end, so that throughput can also be taken over everything between epochs."""

  def on_train_begin(self, logs=None):
    self.seconds, self.ended = [], []
    self.train_started = time.perf_counter()

  def on_epoch_begin(self, epoch, logs=None):
    self.started = time.perf_counter()

  def on_test_begin(self, logs=None):  # validation starts: the epoch's training is over
    self._stop()

  def on_epoch_end(self, epoch, logs=None):
    self._stop()
    self.ended.append(time.perf_counter() - self.train_started)

  def _stop(self):
    if self.started is not None:
      self.seconds.append(time.perf_counter() - self.started)
      self.started = None


def warm_start(model, weights):
  """Loads an earlier model's weights; a clear error when its architecture differs."""
  try:
    model.load_weights(weights).assert_existing_objects_matched()
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    raise RuntimeError(
        f"cannot warm start from {weights}: the last blessed model has another architecture or "
        f"image shape ({str(error).splitlines()[0][:200]}); train once without --warm-start"
    ) from None


def train_vae(config, train, evaluation=None, recalibration_images=None, log_dir=None,
              verbose=2, initial_weights=None, exchange=None):
  """Builds and trains the VAE as the pipeline does; returns (float32 model, history record).

  config: the Trainer's custom_config (PipelineConfig.trainer_config()). `train` yields shuffled
  batches of images; `recalibration_images` shuffled batches for BatchNorm (default: `train`).
  initial_weights: a weights checkpoint of an earlier model (warm start), or None.
  exchange: this process's core_parallel.GradientExchange when several processes train together
  (see train_on_cores); only the first of them recalibrates BatchNorm and returns a model.
  """
  keras.utils.set_random_seed(config["seed"])
  policy = "mixed_bfloat16" if config["mixed_precision"] else None
  architecture = dict(image_shape=tuple(config["image_shape"]), latent_dim=config["latent_dim"],
                      hidden_units=config["hidden_units"], beta=config["beta"])
  train = without_autotuning(train)
  recalibration_images = (train if recalibration_images is None
                          else without_autotuning(recalibration_images))
  batch_sizes = [int(batch.shape[0]) for batch in train]  # also fills the dataset's cache
  steps = config["epochs"] * len(batch_sizes)
  with distribute.strategy().scope():  # see models/distribute.py
    model = vae_lib.build_vae(**architecture, policy=policy)
    if initial_weights:  # before the optimizer exists: the checkpoint holds weights only
      warm_start(model, initial_weights)
    # Cosine decay to 0 over the whole run: a high rate early, fine steps at the end
    # (several held-out nats better than a constant rate in benchmarks/quality.py).
    schedule = keras.optimizers.schedules.CosineDecay(config["learning_rate"], max(steps, 1))
    # Clipping lets the high early rate through without the occasional blow-up. The legacy Adam
    # (same update rule) applies each variable's update as one fused op; Keras' newer Adam runs
    # about ten elementwise ops per variable, so the legacy one trains faster.
    # With several processes, the exchange clips the summed gradients instead (faster there).
    optimizer = keras.optimizers.legacy.Adam(
        schedule, clipnorm=config["clip_norm"] if exchange is None else None)
    model.compile(optimizer=optimizer, steps_per_execution=STEPS_PER_CALL)
    # Creating Adam's slots now means the train step is traced once, not twice (less
    # warm-up). The legacy optimizer has no public call for it; tf_keras' legacy code is frozen.
    optimizer._create_all_weights(model.trainable_variables)  # pylint: disable=protected-access
  if exchange is not None:
    model.exchange = exchange
    # Each process draws its own epsilons (the weights above are the same in every process).
    tf.random.set_seed(config["seed"] + exchange.index)
  timer = EpochTimer()  # listed before RecalibrateBeforeValidation: times training steps only
  callbacks = [StopOnNonFiniteLoss(), timer]
  if evaluation is not None:
    callbacks.append(RecalibrateBeforeValidation(recalibration_images))
  if log_dir:
    callbacks.append(keras.callbacks.TensorBoard(log_dir, profile_batch=0))
  # Validation (with its BatchNorm re-estimate) is not free: three times per run.
  validation_freq = max(1, config["epochs"] // VALIDATIONS)
  # Repeated datasets with their steps given: Keras then keeps one iterator for the whole run
  # instead of making a new one every epoch (with autotuning, each teardown stalls it).
  validation = {}
  if evaluation is not None:
    evaluation = without_autotuning(evaluation)
    validation = dict(validation_data=evaluation.repeat(),
                      validation_steps=sum(1 for _ in evaluation))
  history = model.fit(train.repeat(), steps_per_epoch=len(batch_sizes), epochs=config["epochs"],
                      validation_freq=validation_freq, verbose=verbose, callbacks=callbacks,
                      **validation)
  if exchange is not None:
    exchange.report_weights([w.numpy() for w in model.trainable_weights])
    if exchange.index > 0:
      return None, None
  recalibrate_batchnorm(model, recalibration_images)
  record = {k: [float(v) for v in vs] for k, vs in history.history.items()}
  record.update(epoch_seconds=timer.seconds, epoch_ended=timer.ended,
                train_images=sum(batch_sizes),
                train_processes=1 if exchange is None else exchange.count,
                # 1-based epochs that the val_* entries belong to (Keras validates every Nth).
                val_epochs=[e for e in range(1, config["epochs"] + 1) if e % validation_freq == 0]
                if evaluation is not None else [])
  if policy:  # serve float32: the same weights, no bfloat16 rounding, fast on any CPU
    model = vae_lib.copy_weights(model, vae_lib.build_vae(**architecture))
  return model, record


def processes_here(config, train_images):
  """How many processes train on this machine (core_parallel.processes_to_use)."""
  gpus = len(tf.config.list_physical_devices("GPU"))
  return core_parallel.processes_to_use(
      config, distribute.strategy_name(os.environ.get("TF_CONFIG", ""), gpus), gpus,
      train_images)


def run_fn(fn_args):
  """Trains the VAE on the transformed train split and exports the serving SavedModel."""
  config = fn_args.custom_config
  # Before the datasets exist: a shuffle's order depends on the global seed at its creation.
  keras.utils.set_random_seed(config["seed"])
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  train = image_dataset(fn_args.train_files, tft_output, config["batch_size"], shuffle=True,
                        seed=config["seed"])
  evaluation = image_dataset(fn_args.eval_files, tft_output, config["batch_size"])
  # Shuffled: the per-epoch estimate uses the first few batches, and files are often sorted.
  recalibration_images = image_dataset(fn_args.train_files, tft_output, RECALIBRATION_BATCH_SIZE,
                                       shuffle=True, seed=config["seed"])
  # Warm start: the base model (the latest blessed one, when asked for) left its weights beside
  # its SavedModel.
  initial_weights = (weights_path(os.path.dirname(fn_args.base_model)) if fn_args.base_model
                     else None)
  train_images = images_of(train)  # parsed once: the dataset caches what it reads
  processes = processes_here(config, len(train_images))
  if processes > 1:  # one per core, each with one thread: see models/core_parallel.py
    model, record = core_parallel.train_on_cores(
        config, train_images, images_of(evaluation), log_dir=fn_args.model_run_dir,
        initial_weights=initial_weights, processes=processes)
  else:
    model, record = train_vae(config, train, evaluation, recalibration_images,
                              log_dir=fn_args.model_run_dir, initial_weights=initial_weights)
  # Every worker of a multi-worker run must save (collective ops); only the chief's copy is kept.
  serving_dir = (fn_args.serving_model_dir if distribute.is_chief()
                 else tempfile.mkdtemp(prefix="non-chief-model-"))
  export.export_serving_model(model, tft_output, config["latent_dim"], serving_dir)
  if distribute.is_chief():
    # The weights, for a later run's warm start; the history and settings, for the run report.
    model.save_weights(weights_path(os.path.dirname(fn_args.serving_model_dir)))
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, features.HISTORY_FILE), "w") as f:
      json.dump(dict(record, config=config), f)
