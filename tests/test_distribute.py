"""Training over local worker processes (train_workers: models/local_workers.py), for real: two
workers on 127.0.0.1 under MultiWorkerMirroredStrategy, against the one-process Trainer."""
import contextlib
import json
import os
import socket
import threading
import time
import types

import numpy as np
import psutil
import pytest
import tensorflow as tf
import tf_keras as keras

from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import features
from vae_pipeline.models import local_workers
from vae_pipeline.models import trainer
from vae_pipeline.models import vae as vae_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)


def small_config(**overrides):
  return PipelineConfig(image_shape=SHAPE, **dict(dict(latent_dim=4, hidden_units=32),
                                                  **overrides)).trainer_config()


@pytest.fixture(autouse=True)
def workers_environment(monkeypatch, tmp_path):
  """Workers import tests.distributed_training, and make their temporary folders under a folder
  of this test's own (to see that they remove them)."""
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  (tmp_path / "worker-tmp").mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp_path / "worker-tmp"))
  monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.fixture(scope="module")
def split(digits):
  images = digits[0].astype(np.float32) / 255.0
  return images[:1024], images[4000:4512]


@pytest.fixture(scope="module")
def transform_output(tmp_path_factory):
  """The Transform component's output for this project's preprocessing_fn (it has no analyzers:
  one example is enough to write it)."""
  import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel
  from tensorflow_transform.tf_metadata import (  # pylint: disable=import-outside-toplevel
      dataset_metadata, metadata_io, schema_utils)
  from vae_pipeline.models import preprocessing  # pylint: disable=import-outside-toplevel
  out = str(tmp_path_factory.mktemp("transform"))
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
      {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}))
  png = tf.io.encode_png(np.zeros(SHAPE, np.uint8)).numpy()
  with tft_beam.Context(temp_dir=os.path.join(out, "tmp"), force_tf_compat_v1=False):
    transform_fn = (([{features.IMAGE_KEY: png}], metadata) | tft_beam.AnalyzeDataset(
        lambda inputs: preprocessing.preprocessing_fn(inputs, {"image_shape": list(SHAPE)})))
    _ = transform_fn | tft_beam.WriteTransformFn(out)
  metadata_io.write_metadata(metadata, os.path.join(out, "metadata"))
  return out


def write_transformed(images, path):
  """Transformed examples as the Transform component writes them (GZIP TFRecords)."""
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for image in images:
      feature = tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel()))
      writer.write(tf.train.Example(features=tf.train.Features(
          feature={features.TRANSFORMED_IMAGE_KEY: feature})).SerializeToString())
  return path


@pytest.fixture(scope="module")
def transformed_split(split, tmp_path_factory):
  folder = tmp_path_factory.mktemp("transformed")
  train, held_out = split
  return ([write_transformed(train, str(folder / "train.gz"))],
          [write_transformed(held_out, str(folder / "eval.gz"))])


def fn_args_for(folder, config, transform_output, transformed_split):
  train_files, eval_files = transformed_split
  os.makedirs(os.path.join(folder, "model_run"))
  return types.SimpleNamespace(
      custom_config=config, transform_output=transform_output, train_files=train_files,
      eval_files=eval_files, base_model=None,
      serving_model_dir=os.path.join(folder, "model", "Format-Serving"),
      model_run_dir=os.path.join(folder, "model_run"))


def held_out_loss(weights, images, latent_dim):
  """Deterministic (z = mean) negative ELBO, nats per image, of a saved model's weights."""
  model = vae_lib.build_vae(SHAPE, latent_dim=latent_dim, hidden_units=32)
  model.load_weights(weights).assert_existing_objects_matched()
  mean, log_var = model.encoder(images, training=False)
  return float(tf.reduce_mean(vae_lib.reconstruction_loss(images, model.decoder(mean))
                              + vae_lib.kl_loss(mean, log_var)))


def test_two_workers_apply_the_update_of_one_process_on_the_same_global_batch(split, tmp_path):
  """Two SGD steps of the VAE's train step on global batches of 64: 2 workers (32 each) against
  one process computing the same update on its own.

  BatchNorm: each worker normalizes its share with the share's statistics (plain Keras
  BatchNormalization under MultiWorkerMirroredStrategy, not SyncBatchNormalization), so the
  one-process reference takes one forward pass per share, sums the shares' loss sums and divides
  by the global batch size. The posterior's log-variance starts at -100 (a warm-start
  checkpoint), so z = mean and the workers' own epsilon draws do not matter. What remains is
  float rounding (see the tolerance below); plain SGD keeps the update proportional to the
  gradient (Adam would turn rounding into +-lr for elements near zero, and hide a wrong scale).
  """
  architecture = dict(image_shape=SHAPE, latent_dim=4, hidden_units=32)
  images = split[0][:128]
  np.save(tmp_path / "images.npy", images)
  model = vae_lib.build_vae(**architecture)
  log_var_head = next(layer for layer in model.encoder.layers
                      if isinstance(layer, keras.layers.Dense) and layer.name != "z_mean"
                      and layer.units == 4)
  log_var_head.set_weights([np.zeros_like(log_var_head.kernel), np.full((4,), -100.0)])
  model.save_weights(str(tmp_path / "initial" / "weights"))
  learning_rate = 1e-4
  local_workers.run("tests.distributed_training.sgd_steps", dict(
      architecture=architecture, images=str(tmp_path / "images.npy"), batch_size=64,
      learning_rate=learning_rate, initial_weights=str(tmp_path / "initial" / "weights"),
      out=str(tmp_path), name="two"), 2)

  initial = [w.numpy() for w in model.trainable_weights]
  optimizer = keras.optimizers.legacy.SGD(learning_rate)
  losses = []
  for batch in (images[:64], images[64:]):
    with tf.GradientTape() as tape:
      sums = [tf.reduce_sum(rec + kl) for rec, kl in
              (model.losses_of(share, training=True) for share in (batch[:32], batch[32:]))]
      loss = (sums[0] + sums[1]) / 64
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                  model.trainable_weights))
    losses.append(float(loss))
  alone = [w.numpy() for w in model.trainable_weights]

  chief, other = (np.load(tmp_path / f"two-{index}.npz") for index in (0, 1))
  assert len(chief.files) == len(alone) == 26
  for i, (start, expected) in enumerate(zip(initial, alone)):
    got = chief[f"arr_{i}"]
    np.testing.assert_array_equal(got, other[f"arr_{i}"])  # the workers agree exactly
    update, expected_update = got - start, expected - start
    name, scale = model.trainable_weights[i].name, np.abs(expected_update).max()
    # Rounding: of the float32 gradient (the same sums split over threads differently; in the
    # first layers BatchNorm's backward, a difference of near-equal terms, magnifies it: seen up
    # to 3.3% of the first convolution's update overall on a loaded machine, 2.3% in single
    # elements), and of storing w + update (an ulp of w). A wrong share, a wrong scale or a
    # missing all-reduce moves updates by 50-100% (tried).
    ulp = np.spacing(np.abs(start).max())
    np.testing.assert_allclose(update, expected_update, rtol=0, err_msg=name,
                               atol=0.05 * scale + 4 * ulp)
    assert (np.linalg.norm(update - expected_update)
            <= 0.05 * np.linalg.norm(expected_update) + 4 * ulp * np.sqrt(update.size)), name
  # Every worker logs the global batches' mean loss.
  logged = json.loads((tmp_path / "two-0.json").read_text())["loss"][-1]
  np.testing.assert_allclose(logged, np.mean(losses), rtol=1e-5)


def test_two_workers_train_as_well_as_one_process_and_only_the_chief_writes(
    split, transform_output, transformed_split, tmp_path):
  """The Trainer's run_fn with train_workers=2 and 1: 1,024 digits, 6 epochs of batch 64.

  Margin: the two runs start from the same weights and batches, but draw different epsilons, and
  BatchNorm sees 32-image shares under two workers. Over seeds 42-46 the held-out losses of the
  pair differed by -2.5% to +1.8% (standard deviation 1.6%); 6% is about 3.7 of those.
  """
  held_out = split[1]
  losses = {}
  for workers in (2, 1):
    folder = str(tmp_path / f"workers-{workers}")
    config = small_config(epochs=6, batch_size=64, latent_dim=16, train_workers=workers)
    fn_args = fn_args_for(folder, config, transform_output, transformed_split)
    trainer.run_fn(fn_args)
    with open(os.path.join(fn_args.model_run_dir, features.HISTORY_FILE)) as f:
      history = json.load(f)
    assert history["train_workers"] == workers and history["train_images"] == 1024
    assert history["val_epochs"] == [2, 4, 6] and len(history["epoch_seconds"]) == 6
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert tf.io.gfile.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb"))
    losses[workers] = held_out_loss(trainer.weights_path(os.path.dirname(
        fn_args.serving_model_dir)), held_out, latent_dim=16)
  # Only the chief's outputs exist: the other worker wrote its own under a temporary folder
  # (under TMPDIR, this test's), and removed it.
  assert os.listdir(tmp_path / "worker-tmp") == []
  two, one = losses[2], losses[1]
  assert abs(two - one) < 0.06 * one, (two, one)


def test_a_last_batch_too_small_to_share_is_left_out_under_two_workers(split, tmp_path):
  """65 training and 33 held-out images in batches of 32: each split's last batch has one image,
  and one of two workers would get none (BatchNorm fails on an empty batch)."""
  np.save(tmp_path / "train.npy", split[0][:65])
  np.save(tmp_path / "eval.npy", split[1][:33])
  local_workers.run("tests.distributed_training.train_on", dict(
      config=small_config(epochs=3, batch_size=32), images=str(tmp_path / "train.npy"),
      eval_images=str(tmp_path / "eval.npy"), out=str(tmp_path), name="two"), 2)
  record = json.loads((tmp_path / "two-0.json").read_text())
  assert record["train_images"] == 64 and record["val_epochs"] == [1, 2, 3]
  assert np.all(np.isfinite(record["val_loss"]))


def workers_of_this_process():
  """{worker index: process} of the local workers this process started, alive now."""
  workers = {}
  for process in psutil.Process().children(recursive=True):
    try:
      command = process.cmdline()
    except psutil.Error:  # it ended meanwhile
      continue
    if "vae_pipeline.models.local_workers" in command:
      workers[int(command[-1])] = process
  return workers


def test_a_killed_worker_ends_the_trainer_with_an_error_naming_it(
    transform_output, transformed_split, tmp_path):
  fn_args = fn_args_for(str(tmp_path / "run"), small_config(epochs=200, batch_size=128,
                                                            train_workers=2),
                        transform_output, transformed_split)
  outcome = {}

  def run():
    try:
      trainer.run_fn(fn_args)
    except BaseException as error:  # pylint: disable=broad-except
      outcome["error"], outcome["at"] = error, time.monotonic()

  thread = threading.Thread(target=run)
  thread.start()
  try:
    # Mid-training: once worker 1 has logged its second epoch.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and thread.is_alive():
      workers = workers_of_this_process()
      if 1 in workers:
        with contextlib.suppress(psutil.Error, OSError):
          with open(os.path.join(workers[1].cmdline()[-2], "worker-1.log"),
                    errors="replace") as f:
            if "Epoch 2/" in f.read():
              break
      time.sleep(0.2)
    else:
      pytest.fail(f"worker 1 did not reach its second epoch: {outcome}")
    workers[1].kill()
    killed = time.monotonic()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the Trainer did not end within 60 s of the kill"
    assert not workers_of_this_process()  # the chief was stopped too
  finally:  # whatever failed above, no worker keeps training
    for process in workers_of_this_process().values():
      process.kill()
  error = outcome["error"]
  assert isinstance(error, local_workers.WorkerFailed) and error.index == 1
  assert str(error).startswith("training worker 1 of 2 was killed by signal SIGKILL"), error
  assert outcome["at"] - killed < 10, outcome["at"] - killed  # seconds
  assert not os.path.exists(fn_args.serving_model_dir)  # nothing exported
  assert not os.path.exists(os.path.join(fn_args.model_run_dir, features.HISTORY_FILE))


def test_a_worker_that_cannot_start_fails_with_an_error_naming_it():
  # Worker 1's port is taken: its server cannot start, and worker 0 would wait for it.
  ports = local_workers.free_ports(2)
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", ports[1]))
    taken.listen()
    started = time.monotonic()
    with pytest.raises(local_workers.WorkerFailed,
                       match=r"^training worker 1 of 2 failed: ") as error:
      local_workers.run("tests.distributed_training.nothing", {}, 2, ports=ports)
  assert error.value.index == 1 and time.monotonic() - started < 60
  assert not workers_of_this_process()


def test_train_workers_are_for_a_cpu_only_machine_without_a_cluster(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", local_workers.tf_config([2222, 2223], 0))
  fn_args = types.SimpleNamespace(custom_config=small_config(train_workers=2))
  with pytest.raises(ValueError, match="already runs with 2 worker"):
    trainer.run_fn(fn_args)
  with pytest.raises(ValueError, match="train_workers must be at least 1"):
    PipelineConfig(train_workers=0)


def test_each_local_worker_gets_its_own_cpus(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
  assert [local_workers.cpus_of_worker(i, 2) for i in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert [local_workers.cpus_of_worker(i, 3) for i in range(3)] == [[0, 1], [2, 3], [4, 5]]
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})
  assert [local_workers.cpus_of_worker(i, 3) for i in range(3)] == [[2], [3], [2]]
  config = json.loads(local_workers.tf_config([5000, 5001], 1))
  assert config == {"cluster": {"worker": ["127.0.0.1:5000", "127.0.0.1:5001"]},
                    "task": {"type": "worker", "index": 1}}

