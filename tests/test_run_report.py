"""The RunReport component: its page on made-up facts (fast), its executor and its place in a real
run (the labelled RGB run of conftest.py), and the page in headless Chromium (Debian's `chromium`).
"""
import dataclasses
import glob
import html.parser
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image
from tfx.types import artifact_utils

from vae_pipeline import summary as summary_lib
from vae_pipeline.components.run_report import executor, page
from vae_pipeline.models import features

# What a locked-down machine needs for a headless start with no network (see docs/testing.md).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files"]


class Images(html.parser.HTMLParser):
  """The src of every <img> on a page."""

  def __init__(self):
    super().__init__()
    self.sources = []

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.sources.append(dict(attrs)["src"])


def images_of(page_html):
  parser = Images()
  parser.feed(page_html)
  return parser.sources


def made_up_facts(**changes):
  facts = executor.Facts(
      run_id="2026-01-01T00:00:00", written="2026-01-01 00:00 UTC", image_shape=(28, 28, 1),
      latent_dim=2, inputs=100, bad_inputs=2, bad_inputs_file="/data/bad_inputs.csv", span=3,
      label_names=["cat <tabby>", "dog"],
      splits=[executor.SplitStatistics("eval", 20, [
          dict(name="image", type="STRING", present=1.0, summary="300 bytes on average")])],
      history={"loss": [200.0, 150.0], "epoch_seconds": [3.0, 1.0], "train_images": 80,
               "config": {"latent_dim": 2, "batch_size": 32}},
      metrics={features.LOSS: 150.0, features.NEG_ELBO: 155.0, "example_count": 20.0},
      baseline_metrics={features.LOSS: 149.5},
      label_metrics={"0": {features.LOSS: 140.0, "example_count": 12.0},
                     "1": {features.LOSS: 165.0, "example_count": 8.0}},
      blessed=False, blessing_reasons=["loss 150.00 is +0.50 vs the latest blessed model's 149.50"],
      loss_upper_bound=300.0, max_loss_increase=0.0, pushed_dir=None, model_dir="/m",
      figures={"training_curves": "training_curves.png", "latent": "latent.png"})
  return dataclasses.replace(facts, **changes)


def test_page_states_the_decision_with_the_numbers_it_compared():
  text = page.render(made_up_facts())
  assert "Not blessed, not pushed" in text and "+0.50 vs the latest blessed model" in text
  assert "+0.50 (allowed +0.00)" in text and "FAIL" in text  # the change rule failed ...
  assert "300.00" in text  # ... the bound is shown too
  assert "2 skipped as unreadable" in text and "Data span 3" in text
  assert "cat &lt;tabby&gt;" in text and "<tabby>" not in text  # names are escaped
  assert images_of(text) == ["training_curves.png", "latent.png"]  # only figures that exist
  assert "1 (dog)" in text  # per-label rows name their class


def test_page_for_a_first_blessed_model_and_unlabelled_data():
  text = page.render(made_up_facts(blessed=True, blessing_reasons=[], baseline_metrics={},
                                   label_metrics={}, label_names=None, pushed_dir="/serving/7"))
  assert "Blessed: loss 150.00" in text and "/serving/7" in text
  assert "no other blessed model: not checked" in text
  assert "Per label" not in text


def run_artifacts(metadata_path, run_id):
  """(component, output key) -> TFX artifact, for every output of a recorded run."""
  store = summary_lib.open_store(metadata_path)
  run = store.get_context_by_type_and_name("pipeline_run", run_id)
  artifacts = {}
  for execution in store.get_executions_by_context(run.id):
    node = next(c for c in store.get_contexts_by_execution(execution.id) if c.type == "node")
    for event in store.get_events_by_execution_ids([execution.id]):
      if event.type == metadata_store_pb2.Event.OUTPUT:
        [artifact] = store.get_artifacts_by_id([event.artifact_id])
        [kind] = store.get_artifact_types_by_id([artifact.type_id])
        artifacts[(node.name.split(".", 1)[-1], event.path.steps[0].key)] = (
            artifact_utils.deserialize_artifact(kind, artifact))
  return artifacts


@pytest.mark.e2e
def test_the_run_wrote_a_report_with_every_figure(rgb_run):
  config, summary = rgb_run
  assert summary.report and os.path.isfile(summary.report)
  folder = os.path.dirname(summary.report)
  with open(summary.report) as f:
    text = f.read()
  sources = images_of(text)
  # Labelled data, latent dim 16: no manifold, a per-label chart.
  assert sorted(sources) == sorted(["training_curves.png", "reconstructions.png",
                                    "prior_samples.png", "latent.png", "label_metrics.png"])
  for source in sources:
    with Image.open(os.path.join(folder, source)) as picture:
      assert picture.width > 300 and np.asarray(picture.convert("L")).std() > 10
  assert f"pushed to <code>{summary.pushed_dir}</code>" in text
  for name in ("blue", "green", "red"):
    assert f"({name})" in text
  # The evaluation table shows the Evaluator's own numbers.
  assert f"{summary.metrics[features.LOSS]:,.2f}" in text
  assert "Split train" in text and "Split eval" in text


@pytest.mark.e2e
def test_executor_on_the_runs_artifacts(rgb_run, tmp_path):
  """The executor alone, on the real artifacts the run recorded: the same page, any folder."""
  config, summary = rgb_run
  artifacts = run_artifacts(config.metadata_path, summary.run_id)
  path = executor.write_report(
      str(tmp_path), examples=artifacts[("ExampleGen", "examples")],
      statistics=artifacts[("StatisticsGen", "statistics")],
      model=artifacts[("Trainer", "model")], model_run=artifacts[("Trainer", "model_run")],
      evaluation=artifacts[("Evaluator", "evaluation")],
      blessing=artifacts[("Evaluator", "blessing")],
      pushed_model=artifacts[("Pusher", "pushed_model")],
      loss_upper_bound=config.loss_upper_bound, max_loss_increase=config.max_loss_increase,
      run_id="again")
  with open(path) as f:
    text = f.read()
  examples = sum(s.examples for s in executor.read_statistics(
      artifacts[("StatisticsGen", "statistics")]))
  assert examples == 240 == summary.inputs
  assert "Run again" in text and sorted(os.listdir(tmp_path)) == sorted(
      ["index.html"] + images_of(text))


def chromium():
  found = shutil.which("chromium") or shutil.which("chromium-browser")
  if not found:
    if os.environ.get("REQUIRE_CHROMIUM"):
      pytest.fail("REQUIRE_CHROMIUM is set but chromium is not installed")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it")
  return found


def browse(page_path, tmp_path, *args):
  profile = tmp_path / f"profile-{len(os.listdir(tmp_path))}"
  result = subprocess.run(
      [chromium()] + CHROMIUM_FLAGS + [f"--user-data-dir={profile}", "--window-size=1200,5000"]
      + list(args) + ["file://" + os.path.abspath(page_path)],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


@pytest.mark.e2e
def test_report_in_headless_chromium_loads_every_image(rgb_run, tmp_path):
  config, summary = rgb_run
  report = tmp_path / "report"
  shutil.copytree(os.path.dirname(summary.report), report)
  with open(report / "index.html") as f:
    text = f.read()
  count = len(images_of(text))
  # A copy of the page that, once loaded, records how many of its images decoded.
  checker = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
             " document.body.dataset.images = all.length; document.body.dataset.loaded ="
             " all.filter(i => i.complete && i.naturalWidth > 0).length; });</script></body>")
  (report / "checked.html").write_text(text.replace("</body>", checker))
  dom = browse(report / "checked.html", tmp_path, "--dump-dom", "--virtual-time-budget=5000")
  assert re.search(rf'data-images="{count}"', dom) and re.search(rf'data-loaded="{count}"', dom), \
      dom[:500]

  # The screenshot of the page against one of the same page with its pictures missing.
  shot = tmp_path / "report.png"
  browse(report / "index.html", tmp_path, f"--screenshot={shot}")
  broken = tmp_path / "broken"
  shutil.copytree(report, broken)
  for png in glob.glob(str(broken / "*.png")):
    os.remove(png)
  broken_shot = tmp_path / "broken.png"
  browse(broken / "index.html", tmp_path, f"--screenshot={broken_shot}")
  with Image.open(shot) as a, Image.open(broken_shot) as b:
    seen, without = np.asarray(a.convert("L"), float), np.asarray(b.convert("L"), float)
  assert seen.shape == (5000, 1200)
  # The pictures cover a large part of the page: many pixels change when they are missing.
  assert np.mean(np.abs(seen - without) > 30) > 0.05
