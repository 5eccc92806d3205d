"""Retraining on new data, end to end on two spans (span-N folders), and a run killed mid-way.

Run 1 trains on span 1 and pushes. Span 2 arrives: run 2 trains on span 2 only and is compared
with run 1's blessed model. Run 3 trains on the newest two spans (--span-window 2); run 4, with
nothing new, is served from TFX's cache up to the Trainer.
"""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files as files
from vae_pipeline import local_runner
from vae_pipeline import summary as summary_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.models import features

pytestmark = pytest.mark.e2e

PER_SPAN = 160
SETTINGS = dict(epochs=2, batch_size=32, latent_dim=2, max_loss=1000.0,
                # Blessing is not what this test is about: let a new span's model through.
                max_loss_increase=1000.0)
CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")


def write_span(folder, span, images):
  for i, image in enumerate(images):
    path = folder / f"span-{span}" / f"{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(files.encode(Image.fromarray(image[..., 0])))


def count_records(examples_uri, split):
  paths = glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
  return sum(1 for _ in tf.data.TFRecordDataset(paths, compression_type="GZIP"))


def states(summary):
  return {c.component: c.state for c in summary.components}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
  data, out = tmp_path_factory.mktemp("spans"), tmp_path_factory.mktemp("retraining")
  config = lambda **more: PipelineConfig(data=str(data), output_dir=str(out), **SETTINGS, **more)
  write_span(data, 1, digits[0][:PER_SPAN])
  first = local_runner.run(config(), show_progress=False)
  write_span(data, 2, digits[0][PER_SPAN:2 * PER_SPAN])
  second = local_runner.run(config(), show_progress=False)
  window = local_runner.run(config(span_window=2), show_progress=False)
  again = local_runner.run(config(span_window=2), show_progress=False)
  # In two training processes: each starts from the blessed model's weights.
  warm = local_runner.run(config(span_window=2, warm_start=True, train_workers=2),
                          show_progress=False)
  return first, second, window, again, warm


def history_of(summary):
  with open(os.path.join(summary.component("Trainer").outputs["model_run"][0],
                         features.HISTORY_FILE)) as f:
    return json.load(f)


def test_each_run_reads_the_newest_span(runs):
  first, second, *_ = runs
  for summary, span in ((first, 1), (second, 2)):
    assert summary.component("ExampleGen").properties["examples"]["span"] == span
    assert summary.inputs == PER_SPAN


def test_a_new_span_trains_a_new_model_compared_with_the_last_blessed_one(runs):
  first, second, *_ = runs
  assert first.blessed and first.pushed_dir and not first.baseline_metrics
  assert states(second)["Trainer"] == "COMPLETE"
  # The baseline is run 1's model, evaluated on span 2's eval split.
  assert second.baseline_metrics[features.LOSS] > 0
  assert second.blessed and second.pushed_dir != first.pushed_dir
  train_span_2 = count_records(second.component("ExampleGen").outputs["examples"][0], "train")
  assert history_of(second)["train_images"] == train_span_2


def test_a_window_trains_on_the_newest_two_spans(runs):
  first, second, window, *_ = runs
  assert states(window)["latest_spans_resolver"] == "COMPLETE"
  train_both = sum(count_records(s.component("ExampleGen").outputs["examples"][0], "train")
                   for s in (first, second))
  assert history_of(window)["train_images"] == train_both


def test_nothing_new_is_served_from_the_cache(runs):
  _, _, window, again, _ = runs
  cached = states(again)
  # The Evaluator too: its baseline is never the candidate itself (pipeline/resolvers.py).
  for component in ("ExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer",
                    "Evaluator", "Pusher", "RunReport"):
    assert cached[component] == "CACHED", cached
  assert again.model_dir == window.model_dir  # the same model, not a retrained one


def test_a_run_killed_during_training_leaves_the_store_usable(tmp_path, digits):
  """SIGKILL while the Trainer runs; the next run completes, reusing what had finished."""
  data = tmp_path / "data"
  write_span(data, 1, digits[0][:PER_SPAN])
  command = [CLI, "run", "--data", str(data), "--output-dir", str(tmp_path / "out"),
             "--batch-size", "32", "--max-loss", "1000"]
  killed = subprocess.Popen(command + ["--epochs", "30"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
  for line in killed.stdout:
    if line.rstrip().endswith("] Trainer ..."):
      break
  os.killpg(killed.pid, signal.SIGKILL)
  killed.wait()
  config = PipelineConfig(data=str(data), output_dir=str(tmp_path / "out"))
  interrupted = summary_lib.summarize(config.metadata_path)  # the store reads fine
  assert states(interrupted)["Transform"] == "COMPLETE"
  assert states(interrupted).get("Trainer") in (None, "RUNNING", "NEW")
  assert not os.path.isdir(config.serving_dir) or not os.listdir(config.serving_dir)

  result = subprocess.run(command + ["--epochs", "2"], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  finished = summary_lib.summarize(config.metadata_path)
  assert finished.run_id != interrupted.run_id
  done = states(finished)
  for component in ("ExampleGen", "StatisticsGen", "SchemaGen", "Transform"):
    assert done[component] == "CACHED", done
  assert done["Trainer"] == "COMPLETE" and finished.pushed_dir


def test_a_warm_start_begins_from_the_latest_blessed_model(runs):
  _, _, window, _, warm = runs
  assert window.blessed
  assert states(warm)["warm_start_model_resolver"] == "COMPLETE"
  assert states(warm)["Trainer"] == "COMPLETE"
  # Its first epoch starts where the blessed model ended, not from random weights.
  assert history_of(warm)["loss"][0] < 0.8 * history_of(window)["loss"][0]
