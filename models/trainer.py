"""The Trainer component's entry point: `run_fn`, named by dotted path in the pipeline."""
import contextlib
import json
import math
import os
import tempfile
import time
import types

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from vae_pipeline.models import distribute
from vae_pipeline.models import export
from vae_pipeline.models import features
from vae_pipeline.models import local_workers
from vae_pipeline.models import vae as vae_lib
from vae_pipeline.models import warmup

# Batches used to re-estimate BatchNorm statistics after training (see recalibrate_batchnorm),
# and, for the per-epoch validation numbers only, before each validation (a cheaper estimate).
RECALIBRATION_BATCHES = 64
RECALIBRATION_BATCHES_PER_EPOCH = 4
RECALIBRATION_BATCH_SIZE = 256
# How many times a run reports its validation losses (on the last epoch among them).
VALIDATIONS = 3
# Training steps per call of Keras' train function (compile's steps_per_execution): Python's
# per-call work (callbacks, logs, the call itself) then comes once per 8 steps, a few percent
# more images/s at small batches (fast_layers.OneTraceStepsLoop: traced once). Keras' callbacks
# see every 8th batch: the loss check, progress and TensorBoard.
STEPS_PER_CALL = 8


def weights_path(model_artifact_dir):
  """The Keras weights checkpoint a Model artifact carries next to its Format-Serving folder."""
  return os.path.join(model_artifact_dir, "Format-KerasWeights", "weights")


# Batches in which the anomaly score's calibration reads the train and eval splits.
CALIBRATION_BATCH_SIZE = 256


def raw_examples(images):
  """Transformed images (float [N, H, W, C] in [0, 1]) -> serialized raw tf.Examples, as a
  client sends them: the PNG of each image's 8-bit pixels (the Transform graph scales by 1/255,
  so this gives the ingested PNG's pixels back exactly)."""
  pixels = tf.cast(tf.round(images * 255.0), tf.uint8)
  return [tf.train.Example(features=tf.train.Features(feature={
      features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[tf.io.encode_png(image).numpy()]))})).SerializeToString() for image in pixels]


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


def without_autotuning(dataset):
  """tf.data's autotuning thread sleeps for a period that doubles up to a minute, and deleting
  an iterator waits for it: Keras stalls between epochs (a new iterator each), or once for up
  to a minute at the end of the run (one iterator). Training input is cached in memory
  and needs no tuning.

  Under several workers (tf.distribute), every worker reads the same batches in the same order
  (same files, same seed) and trains on its share of each: DATA sharding (by files, the default,
  would need a file per worker)."""
  options = tf.data.Options()
  options.autotune.enabled = False
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return dataset.with_options(options)


def shareable(dataset, replicas):
  """Under several replicas each takes its share of every batch: a batch with fewer images than
  replicas (a last one of 1 image, under 2 workers) would leave one without any, which BatchNorm
  cannot take. Such a batch is left out (at most replicas - 1 images); one replica keeps all."""
  if replicas == 1:
    return dataset
  return dataset.filter(lambda batch: tf.shape(batch)[0] >= replicas)


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
              verbose=2, initial_weights=None):
  """Builds and trains the VAE as the pipeline does; returns (float32 model, history record).

  config: the Trainer's custom_config (PipelineConfig.trainer_config()). `train` yields shuffled
  batches of images; `recalibration_images` shuffled batches for BatchNorm (default: `train`).
  initial_weights: a weights checkpoint of an earlier model (warm start), or None.
  Under several workers (models/distribute.py) every worker calls this with the same datasets
  and trains on its share of every batch; each returns the same model.
  """
  strategy = distribute.strategy()  # see models/distribute.py
  keras.utils.set_random_seed(config["seed"])
  policy = "mixed_bfloat16" if config["mixed_precision"] else None
  architecture = dict(image_shape=tuple(config["image_shape"]), latent_dim=config["latent_dim"],
                      hidden_units=config["hidden_units"], beta=config["beta"])
  train = shareable(without_autotuning(train), strategy.num_replicas_in_sync)
  recalibration_images = (train if recalibration_images is None
                          else without_autotuning(recalibration_images))
  batch_sizes = [int(batch.shape[0]) for batch in train]  # also fills the dataset's cache
  steps = config["epochs"] * len(batch_sizes)
  with strategy.scope():
    model = vae_lib.build_vae(**architecture, policy=policy)
    if initial_weights:  # before the optimizer exists: the checkpoint holds weights only
      warm_start(model, initial_weights)
    # Cosine decay to 0 over the whole run: a high rate early, fine steps at the end
    # (several held-out nats better than a constant rate in benchmarks/quality.py).
    schedule = keras.optimizers.schedules.CosineDecay(config["learning_rate"], max(steps, 1))
    # Clipping lets the high early rate through without the occasional blow-up (under several
    # replicas, of the summed gradients). The legacy Adam (same update rule) applies each
    # variable's update as one fused op; Keras' newer Adam runs about ten elementwise ops per
    # variable, so the legacy one trains faster.
    optimizer = keras.optimizers.legacy.Adam(schedule, clipnorm=config["clip_norm"])
    model.compile(optimizer=optimizer, steps_per_execution=STEPS_PER_CALL)
    # Creating Adam's slots now means the train step is traced once, not twice (less
    # warm-up). The legacy optimizer has no public call for it; tf_keras' legacy code is frozen.
    optimizer._create_all_weights(model.trainable_variables)  # pylint: disable=protected-access
  # Every replica's train step returns the global batch's losses: Keras logs the first's.
  model.distribute_reduction_method = "first"
  if distribute.worker_count() > 1:
    # Each worker draws its own epsilons (the weights are the same everywhere: MWMS starts every
    # worker from worker 0's initial values).
    tf.random.set_seed(config["seed"] + distribute.worker_index())
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
    evaluation = shareable(without_autotuning(evaluation), strategy.num_replicas_in_sync)
    validation = dict(validation_data=evaluation.repeat(),
                      validation_steps=sum(1 for _ in evaluation))
  history = model.fit(train.repeat(), steps_per_epoch=len(batch_sizes), epochs=config["epochs"],
                      validation_freq=validation_freq, verbose=verbose, callbacks=callbacks,
                      **validation)
  if strategy.num_replicas_in_sync > 1:
    # The same model in plain variables: every read of the strategy's own (BatchNorm's moving
    # statistics) is a collective, and nothing below needs the other workers.
    model = vae_lib.copy_weights(model, vae_lib.build_vae(**architecture, policy=policy))
  recalibrate_batchnorm(model, recalibration_images)
  record = {k: [float(v) for v in vs] for k, vs in history.history.items()}
  record.update(epoch_seconds=timer.seconds, epoch_ended=timer.ended,
                train_images=sum(batch_sizes), train_workers=distribute.worker_count(),
                # 1-based epochs that the val_* entries belong to (Keras validates every Nth).
                val_epochs=[e for e in range(1, config["epochs"] + 1) if e % validation_freq == 0]
                if evaluation is not None else [])
  if policy:  # serve float32: the same weights, no bfloat16 rounding, fast on any CPU
    model = vae_lib.copy_weights(model, vae_lib.build_vae(**architecture))
  return model, record


def _check_local_workers(workers):
  """train_workers > 1 starts local CPU workers: not where tf.distribute already spreads the
  work over a cluster's machines or this machine's GPUs."""
  cluster, gpus = distribute.worker_count(), len(tf.config.list_physical_devices("GPU"))
  if cluster > 1 or gpus:
    raise ValueError(f"train_workers={workers} starts worker processes on this CPU-only machine; "
                     f"this Trainer already runs with {cluster} worker(s) from TF_CONFIG and "
                     f"{gpus} GPU(s) (models/distribute.py): use train_workers=1")


def run_fn(fn_args):
  """Trains the VAE on the transformed train split and exports the serving SavedModel.

  With train_workers > 1, in that many local worker processes (models/local_workers.py), each
  running train_and_export under MultiWorkerMirroredStrategy; otherwise in this process.
  """
  workers = fn_args.custom_config["train_workers"]
  if workers <= 1:
    train_and_export(fn_args)
    return
  _check_local_workers(workers)
  args = {name: getattr(fn_args, name) for name in
          ("custom_config", "transform_output", "train_files", "eval_files", "base_model",
           "serving_model_dir", "model_run_dir")}
  try:
    local_workers.run(f"{__name__}.train_in_worker", args, workers)
  except BaseException:
    _remove_outputs(fn_args)  # the chief may have written some before a worker failed
    raise


def _remove_outputs(fn_args):
  model_dir = os.path.dirname(fn_args.serving_model_dir)
  for path in (fn_args.serving_model_dir, os.path.dirname(weights_path(model_dir)),
               os.path.join(fn_args.model_run_dir, features.HISTORY_FILE)):
    with contextlib.suppress(tf.errors.NotFoundError):
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
      elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def train_in_worker(args):
  """One local worker's part (local_workers.run): run_fn's arguments as a dict."""
  train_and_export(types.SimpleNamespace(**args))


def train_and_export(fn_args):
  """Trains and exports in this process: alone, or as one worker of several (TF_CONFIG)."""
  distribute.strategy()  # first: under several workers, before TensorFlow runs any op
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
  chief = distribute.is_chief()
  with contextlib.ExitStack() as stack:
    # Every worker of a multi-worker run exports and saves as the chief does (TF's advice: saving
    # may run collectives); the others into a temporary folder, removed afterwards.
    scratch = None if chief else stack.enter_context(
        tempfile.TemporaryDirectory(prefix="vae-non-chief-"))
    serving_dir = fn_args.serving_model_dir if chief else os.path.join(scratch, "Format-Serving")
    run_dir = fn_args.model_run_dir if chief else scratch
    model, record = train_vae(config, train, evaluation, recalibration_images,
                              log_dir=run_dir if chief else None,
                              initial_weights=initial_weights)
    # The anomaly score is calibrated on the eval split (never on other data): its quantiles,
    # threshold and the training codes' Gaussian go into the SavedModel (models/anomaly.py).
    calibration_data = (image_dataset(fn_args.train_files, tft_output, CALIBRATION_BATCH_SIZE),
                        image_dataset(fn_args.eval_files, tft_output, CALIBRATION_BATCH_SIZE),
                        config["anomaly_quantile"])
    export.export_serving_model(
        model, tft_output, config["latent_dim"], serving_dir, calibration_data=calibration_data,
        warmup_examples=raw_examples(next(iter(calibration_data[1]))[:warmup.WARMUP_EXAMPLES]))
    # The weights, for a later run's warm start; the history and settings, for the run report.
    model.save_weights(weights_path(os.path.dirname(serving_dir)))
    with tf.io.gfile.GFile(os.path.join(run_dir, features.HISTORY_FILE), "w") as f:
      json.dump(dict(record, config=config), f)
