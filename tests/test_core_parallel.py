"""Training over several one-thread processes (models/core_parallel.py): the exchange, the shares
of a batch, and real two-process training runs against the Trainer's one-process loop."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import core_parallel
from vae_pipeline.models import trainer

# A process of the exchange test: adds its vectors to the others' for a few steps, prints sums.
EXCHANGE_PROCESS = """
import json, sys
import numpy as np
from vae_pipeline.models import core_parallel
index, count, path, size, steps, send, receive, clip_norm = json.loads(sys.argv[1])
exchange = core_parallel.GradientExchange(index, count, path, size, send, receive, clip_norm)
sums = []
for step in range(steps):
  own = np.arange(size, dtype=np.float32) * (index + 1) + step * 0.1
  # As two gradients of different shapes (clipped, if asked) and a loss sum (never clipped).
  parts = exchange._sum([own[:10], own[10:-1].reshape(-1, 1), own[-1:]], clipped=2)
  assert parts[1].shape == (size - 11, 1)
  sums.append(np.concatenate([part.ravel() for part in parts]).tolist())
print(json.dumps(sums))
"""


def run_exchange(tmp_path, count, size, steps_of, clip_norm=None):
  """Starts `count` processes on one exchange; steps_of(index): how many steps each runs."""
  path = str(tmp_path / "exchange.f32")
  np.memmap(path, np.float32, "w+", shape=(2, count, size)).flush()
  pipes = {(i, j): os.pipe() for i in range(count) for j in range(count) if i != j}
  processes = []
  for index in range(count):
    send = [pipes[index, j][1] for j in range(count) if j != index]
    receive = [pipes[i, index][0] for i in range(count) if i != index]
    processes.append(subprocess.Popen(
        [sys.executable, "-c", EXCHANGE_PROCESS,
         json.dumps([index, count, path, size, steps_of(index), send, receive, clip_norm])],
        pass_fds=send + receive, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for read_end, write_end in pipes.values():
    os.close(read_end)
    os.close(write_end)
  return [process.communicate(timeout=60) + (process.returncode,) for process in processes]


def test_the_exchange_gives_every_process_the_same_sum_at_every_step(tmp_path):
  # Five steps: both sets of slots are used in turn, and each is written again.
  results = run_exchange(tmp_path, count=3, size=1000, steps_of=lambda index: 5)
  assert [code for _, _, code in results] == [0, 0, 0], results
  sums = [json.loads(out) for out, _, _ in results]
  for step in range(5):
    expected = sum(np.arange(1000, dtype=np.float32) * (i + 1) + np.float32(step * 0.1)
                   for i in range(3))
    np.testing.assert_allclose(sums[0][step], expected, rtol=1e-6)
    assert sums[0][step] == sums[1][step] == sums[2][step]  # bit-identical, not just close


def test_the_exchange_clips_each_gradient_sum_as_keras_clipnorm_does(tmp_path):
  size, clip_norm = 1000, 2000.0
  results = run_exchange(tmp_path, count=2, size=size, steps_of=lambda index: 1,
                         clip_norm=clip_norm)
  assert [code for _, _, code in results] == [0, 0], results
  total = sum(np.arange(size, dtype=np.float32) * (i + 1) for i in range(2))
  first, second, loss = total[:10], total[10:-1], total[-1:]
  # The first gradient's sum is within the norm, the second's beyond it; a loss is never clipped.
  assert np.linalg.norm(first) < clip_norm < np.linalg.norm(second) and loss[0] > clip_norm
  expected = np.concatenate([first, tf.clip_by_norm(second, clip_norm).numpy(), loss])
  summed = [json.loads(out)[0] for out, _, _ in results]
  np.testing.assert_allclose(summed[0], expected, rtol=1e-6)
  assert summed[0][:10] == first.tolist()
  assert summed[0] == summed[1]


def test_a_process_that_stops_stops_the_others_with_a_clear_error(tmp_path):
  # Process 1 runs one step fewer: at the last step process 0 finds its pipe closed.
  results = run_exchange(tmp_path, count=2, size=12, steps_of=lambda index: 3 - index)
  (_, error, code), (_, _, other_code) = results
  assert other_code == 0 and code != 0
  assert "RuntimeError: another training process stopped" in error


@pytest.mark.parametrize("count", [2, 3])
def test_the_shares_of_a_batch_hold_each_image_once(tmp_path, count):
  path = str(tmp_path / "exchange.f32")
  np.memmap(path, np.float32, "w+", shape=(2, count, 1)).flush()
  exchanges = [core_parallel.GradientExchange(i, count, path, 1, [], []) for i in range(count)]
  for size in range(count, 12):
    batch = tf.range(size)
    shares = [exchange.share_of(batch) for exchange in exchanges]
    assert tf.concat(shares, 0).numpy().tolist() == list(range(size))
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_the_process_count_follows_cores_batch_and_devices():
  assert core_parallel.processes_for(128, cores=2) == 2
  assert core_parallel.processes_for(128, cores=16) == 2  # at least 64 images each
  assert core_parallel.processes_for(512, cores=16) == 8
  assert core_parallel.processes_for(32, cores=2) == 1
  config = {"batch_size": 128, "epochs": 48, "train_processes": 0}
  use = core_parallel.processes_to_use
  assert use(config, "default", 0, 4000) == core_parallel.processes_for(128)
  assert use(config, "default", 0, 40) == 1  # a short training: starting processes costs more
  assert use(config, "default", 1, 4000) == 1
  assert use(config, "multi_worker_mirrored", 0, 4000) == 1
  assert use(dict(config, train_processes=3), "default", 0, 40) == 3
  with pytest.raises(ValueError, match="train_processes=2 is for CPU-only machines"):
    use(dict(config, train_processes=2), "mirrored", 2, 4000)
  with pytest.raises(ValueError, match="train_processes must be 0"):
    PipelineConfig(train_processes=-1)


def test_different_weights_across_processes_are_refused():
  core_parallel.check_same_weights(["ab" * 32] * 2)
  with pytest.raises(RuntimeError, match="ended with different weights"):
    core_parallel.check_same_weights(["ab" * 32, "cd" * 32])


def small_config(**overrides):
  return PipelineConfig(image_shape=(28, 28, 1), latent_dim=4, hidden_units=32,
                        **overrides).trainer_config()


@pytest.fixture(scope="module")
def split(digits):
  images = digits[0].astype(np.float32) / 255.0
  return images[:1024], images[4000:4512]


def held_out_loss(model, images):
  mean, log_var = model.encoder(images, training=False)
  from vae_pipeline.models import vae as vae_lib  # pylint: disable=import-outside-toplevel
  return float(tf.reduce_mean(vae_lib.reconstruction_loss(images, model.decoder(mean))
                              + vae_lib.kl_loss(mean, log_var)))


def test_two_processes_learn_as_well_as_one_and_repeat_with_a_seed(split):
  train, held_out = split
  config = small_config(epochs=4, batch_size=128, seed=5)
  model, record = core_parallel.train_on_cores(config, train, held_out, verbose=0, processes=2)
  again, _ = core_parallel.train_on_cores(config, train, held_out, verbose=0, processes=2)
  # The weights the processes ended with were checked equal inside train_on_cores.
  assert record["train_processes"] == 2 and record["train_images"] == 1024
  assert len(record["epoch_seconds"]) == 4 and record["val_epochs"] == [1, 2, 3, 4]
  assert record["loss"][-1] < record["loss"][0] and np.all(np.isfinite(record["val_loss"]))
  for a, b in zip(model.get_weights(), again.get_weights()):
    np.testing.assert_array_equal(a, b)
  # The served model is float32 and its BatchNorm statistics were re-estimated (not the init).
  assert all(layer.compute_dtype == "float32" for layer in model.encoder.layers[1:])
  moving_means = [w for w in model.weights if "moving_mean" in w.name]
  assert moving_means and all(np.any(w.numpy() != 0) for w in moving_means)
  # The same training in the Trainer's own process: as good on held-out digits.
  tf.keras.utils.set_random_seed(5)
  batches = (tf.data.Dataset.from_tensor_slices(train).shuffle(1024, seed=5)
             .batch(config["batch_size"]))
  single, _ = trainer.train_vae(config, batches, verbose=0)
  two, one = held_out_loss(model, held_out), held_out_loss(single, held_out)
  assert abs(two - one) < 0.05 * one, (two, one)


def test_a_diverging_loss_in_the_processes_fails_with_the_trainers_error(split):
  train, _ = split
  config = small_config(epochs=1, batch_size=128, learning_rate=1e12)
  with pytest.raises(RuntimeError, match="training diverged: the loss became"):
    core_parallel.train_on_cores(config, train, verbose=0, processes=2)
