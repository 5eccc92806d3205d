"""The RunReport component: its page and model card on made-up facts (fast), its templates as
package data, its executor and its place in a real run (the labelled RGB run of conftest.py), and
the page in headless Chromium (Debian's `chromium`).
"""
import dataclasses
import glob
import html.parser
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image
from tfx.types import Channel, artifact_utils

from tests.test_imports import setup_package_dirs
from vae_pipeline import config as config_lib
from vae_pipeline import summary as summary_lib
from vae_pipeline.components.run_report import executor, page
from vae_pipeline.components.run_report import record as record_lib
from vae_pipeline.components.run_report.component import RunReport
from vae_pipeline.components.run_report.spec import MODEL_CARD_FILE
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


class Parsed(html.parser.HTMLParser):
  """An HTML text's tables (rows of cell texts, blank rows left out), list items and start tags."""

  def __init__(self, text):
    super().__init__()
    self.tables, self.items, self.tags = [], [], []
    self._cell = self._item = None
    self.feed(text)
    self.close()
    self.tables = [[row for row in table if any(row)] for table in self.tables]

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    if tag == "table":
      self.tables.append([])
    elif tag == "tr":
      self.tables[-1].append([])
    elif tag in ("td", "th"):
      self._cell = []
    elif tag == "li":
      self._item = []

  def handle_endtag(self, tag):
    if tag in ("td", "th"):
      self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
      self._cell = None
    elif tag == "li":
      self.items.append(" ".join("".join(self._item).split()))
      self._item = None

  def handle_data(self, data):
    for part in (self._cell, self._item):
      if part is not None:
        part.append(data)


def markdown_as_html(text):
  """The Markdown as a GitHub-like renderer shows it (CommonMark with tables, raw HTML on)."""
  markdown_it = pytest.importorskip("markdown_it")
  return markdown_it.MarkdownIt("commonmark").enable("table").render(text)


def card_of_page(page_html):
  """The page's model card section."""
  return page_html[page_html.index('<h2 id="model-card">'):]


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


# A label name and a source that would break an HTML page or a Markdown table if not escaped.
HOSTILE_LABEL = "dog | <script>alert(1)</script> *a* [b](c) `d` \\"
HOSTILE_SOURCE = "images: /data/x|y <b>z</b>\nsecond line"


def test_model_card_states_what_the_model_is_and_how_it_did():
  card = page.render_card(made_up_facts())
  assert card.startswith("# Model card: image VAE of run 2026-01-01T00:00:00")
  for row in ("| data span | 3 |", "| inputs read | 100 |",
              "| bad inputs skipped | 2 (listed in `/data/bad_inputs.csv`) |",
              "| train examples | 80 |", "| eval examples | 20 |",
              "| labels | 2 classes (from class folders), never used in training |",
              "| 0 | cat \\<tabby\\> | 12 | 140.00 |", "| 1 | dog | 8 | 165.00 |",
              "| `loss` | 150.00 | 149.50 |",
              "| no worse than the latest blessed model | 150.00 | 149.50 | +0.50 (allowed +0.00) "
              "| FAIL |"):
    assert row in card, row
  assert "| source | not recorded |" in card  # the pipeline does not pass one yet
  assert "**Not blessed, not pushed**" in card
  assert "- loss 150.00 is +0.50 vs the latest blessed model's 149.50" in card
  assert "## Anomaly threshold\n\nNot recorded for this model.\n" in card
  assert "## Intended use" in card and "Not a classifier" in card
  assert "## Known limits" in card and "single-stroke" in card
  assert "- Model: `/m` (the candidate; it was not pushed)" in card
  pushed = page.render_card(made_up_facts(blessed=True, blessing_reasons=[], pushed_dir="/s/7"))
  assert "- Model: `/s/7`\n" in pushed and "**Blessed**" in pushed and "Why not" not in pushed


def test_model_card_in_the_page_says_what_the_markdown_says():
  facts = made_up_facts(source="images: /data/pets", anomaly_threshold=812.5)
  in_page = Parsed(card_of_page(page.render(facts)))
  in_markdown = Parsed(markdown_as_html(page.render_card(facts)))
  # Every table, row by row and cell by cell: training data, labels, metrics, rules, threshold.
  assert len(in_page.tables) == 5 and in_page.tables == in_markdown.tables
  # Every list item of the page's card (reasons, intended use, known limits) is in the Markdown.
  assert len(in_page.items) > 8 and set(in_page.items) <= set(in_markdown.items)


def test_model_card_escapes_names_for_html_and_markdown():
  facts = made_up_facts(label_names=["cat <tabby>", HOSTILE_LABEL], source=HOSTILE_SOURCE)
  card = page.render_card(facts)
  assert "<script>" not in card and "\nsecond line" not in card
  for rendered in (markdown_as_html(card), card_of_page(page.render(facts))):
    parsed = Parsed(rendered)
    assert "script" not in parsed.tags and "b" not in parsed.tags and "a" not in parsed.tags
    training_data, labels = parsed.tables[:2]
    assert ["source", "images: /data/x|y <b>z</b> second line"] in training_data
    assert labels[0] == ["label", "class", "eval images", "loss (nats per image)"]
    assert labels[1:] == [["0", "cat <tabby>", "12", "140.00"], ["1", HOSTILE_LABEL, "8", "165.00"]]
    assert all(len(row) == len(table[0]) for table in parsed.tables for row in table)


def test_model_card_shows_the_anomaly_threshold_when_recorded():
  facts = made_up_facts(anomaly_quantile=0.99, anomaly_threshold=812.5, false_positive_rate=0.0123)
  for rendered in (markdown_as_html(page.render_card(facts)), card_of_page(page.render(facts))):
    assert Parsed(rendered).tables[-1] == [
        ["threshold (anomaly score)", "812.50"],
        ["quantile of the eval split's scores", "0.99 (the 99th percentile)"],
        ["false-positive rate", "1.23%"]]
    assert "Not recorded for this model" not in rendered
  partly = page.render_card(made_up_facts(anomaly_threshold=812.5))
  assert "| false-positive rate | not recorded |" in partly


def settings_table(text):
  """The page's settings table (its header row first), or None."""
  return next((table for table in Parsed(text).tables
               if table[0] == ["setting", "flag", "value", "what it does"]), None)


def test_settings_table_shows_each_setting_escaped():
  rows = [["epochs", "--epochs", "3", "training epochs"],
          ["image_feature", "--image-feature", HOSTILE_LABEL, "a <b>feature</b>"]]
  text = page.render(made_up_facts(settings=rows))
  assert settings_table(text) == [["setting", "flag", "value", "what it does"]] + rows
  assert "<script>" not in text and 'href="#settings"' in text
  assert settings_table(page.render(made_up_facts())) is None  # none recorded: no table


def test_source_is_a_parameter_only_when_given():
  channels = {key: Channel(type=parameter.type)
              for key, parameter in RunReport.SPEC_CLASS.INPUTS.items()}
  rule = dict(loss_upper_bound=300.0, max_loss_increase=0.0)
  assert "source" not in RunReport(**channels, **rule).exec_properties  # compiled as before
  assert "settings" not in RunReport(**channels, **rule).exec_properties
  assert RunReport(**channels, **rule, source="images: /data/pets").exec_properties[
      "source"] == "images: /data/pets"


def test_templates_are_found_in_the_source_tree_and_installed_as_package_data(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folder = os.path.join(root, "components", "run_report", "templates")
  templates = sorted(os.listdir(folder))
  assert page.PAGE_TEMPLATE in templates and page.CARD_TEMPLATE in templates
  assert sorted(page.HTML.list_templates()) == templates  # the editable install: this tree
  # A wheel of this tree (setup.py maps pipeline/ to vae_pipeline), installed elsewhere.
  source = tmp_path / "source"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
  for part in setup_package_dirs().values():
    shutil.copytree(os.path.join(root, part), source / part, ignore=ignore)
  shutil.copy(os.path.join(root, "setup.py"), source)
  built = subprocess.run(
      [sys.executable, "-c", "from setuptools import build_meta; "
                             "print(build_meta.build_wheel('dist'))"],
      cwd=source, capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-2000:]
  installed = tmp_path / "installed"
  with zipfile.ZipFile(source / "dist" / built.stdout.split()[-1]) as wheel:
    wheel.extractall(installed)
  shown = subprocess.run(
      [sys.executable, "-c", "from vae_pipeline.components.run_report import page\n"
                             "for name in page.HTML.list_templates():\n"
                             "  (page.MARKDOWN if name.endswith('.md.j2') else page.HTML"
                             ").get_template(name)\n"
                             "print(page.__file__, *page.HTML.list_templates())"],
      env=dict(os.environ, PYTHONPATH=str(installed)), cwd=tmp_path, capture_output=True,
      text=True, timeout=300)
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert shown.stdout.split() == [
      str(installed / "vae_pipeline" / "components" / "run_report" / "page.py")] + templates


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
  # Labelled data, latent dim 16: no manifold, a per-label chart; the anomaly scores.
  assert sorted(sources) == sorted(["training_curves.png", "reconstructions.png",
                                    "prior_samples.png", "latent.png", "label_metrics.png",
                                    "anomaly.png"])
  for source in sources:
    with Image.open(os.path.join(folder, source)) as picture:
      assert picture.width > 300 and np.asarray(picture.convert("L")).std() > 10
  assert f"pushed to <code>{summary.pushed_dir}</code>" in text
  for name in ("blue", "green", "red"):
    assert f"({name})" in text
  # The evaluation table shows the Evaluator's own numbers.
  assert f"{summary.metrics[features.LOSS]:,.2f}" in text
  assert "Split train" in text and "Split eval" in text

  # The model card: beside the page, in the pushed model's folder (the same file), in the page.
  with open(os.path.join(folder, MODEL_CARD_FILE)) as f:
    card = f.read()
  with open(os.path.join(summary.pushed_dir, MODEL_CARD_FILE)) as f:
    assert f.read() == card
  assert sorted(os.listdir(summary.pushed_dir)) == sorted(
      ["assets", "assets.extra", "fingerprint.pb", MODEL_CARD_FILE, "saved_model.pb",
       "variables"])
  # The anomaly threshold the model carries, and its false-positive rate on held-out halves.
  assert re.search(r"\| threshold \(anomaly score\) \| [0-9.]+ \|", card), card
  assert f"- Model: `{summary.pushed_dir}`\n" in card and "**Blessed**" in card
  assert f"| inputs read | {summary.inputs:,} |" in card and "| bad inputs skipped | none |" in card
  train = int(re.search(r"\| train examples \| (\d+) \|", card).group(1))
  evaluated = int(re.search(r"\| eval examples \| (\d+) \|", card).group(1))
  assert evaluated == summary.metrics["example_count"] and train + evaluated == summary.inputs
  for value, name in enumerate(summary.label_names):
    assert f"| {value} | {name} |" in card
  assert f"| `loss` | {summary.metrics[features.LOSS]:,.2f} | - |" in card
  assert "## Anomaly threshold" in card and "## Known limits" in card
  assert Parsed(card_of_page(text)).tables == Parsed(markdown_as_html(card)).tables
  # The settings table: every setting of the run, as config.settings_rows derives them.
  assert settings_table(text)[1:] == config_lib.settings_rows(config.resolved())


@pytest.mark.e2e
def test_executor_on_the_runs_artifacts(rgb_run, tmp_path):
  """The executor alone, on the real artifacts the run recorded: the same page, any folder."""
  config, summary = rgb_run
  artifacts = run_artifacts(config.metadata_path, summary.run_id)
  # One record of the run: the report reads from its input artifacts what the printed summary
  # reads through ML Metadata, with the same reader.
  facts = executor.gather(
      artifacts[("ExampleGen", "examples")], artifacts[("StatisticsGen", "statistics")],
      artifacts[("Trainer", "model")], artifacts[("Trainer", "model_run")],
      artifacts[("Evaluator", "evaluation")], artifacts[("Pusher", "pushed_model")],
      config.loss_upper_bound, config.max_loss_increase, summary.run_id)
  shared = [field.name for field in dataclasses.fields(record_lib.RunRecord)]
  assert {name: getattr(facts, name) for name in shared} == {
      name: getattr(summary, name) for name in shared}
  assert facts.pushed_dir == summary.pushed_dir and facts.blessed and facts.inputs == 240
  # A copy of the pushed model, so that the run's own card stays as the run wrote it.
  pushed = tmp_path / "serving" / os.path.basename(summary.pushed_dir)
  shutil.copytree(summary.pushed_dir, pushed, ignore=shutil.ignore_patterns(MODEL_CARD_FILE))
  artifacts[("Pusher", "pushed_model")].set_string_custom_property("pushed_destination",
                                                                   str(pushed))
  report = tmp_path / "report"
  path = executor.write_report(
      str(report), examples=artifacts[("ExampleGen", "examples")],
      statistics=artifacts[("StatisticsGen", "statistics")],
      model=artifacts[("Trainer", "model")], model_run=artifacts[("Trainer", "model_run")],
      evaluation=artifacts[("Evaluator", "evaluation")],
      pushed_model=artifacts[("Pusher", "pushed_model")],
      loss_upper_bound=config.loss_upper_bound, max_loss_increase=config.max_loss_increase,
      run_id="again", source=HOSTILE_SOURCE)
  with open(path) as f:
    text = f.read()
  examples = sum(s.examples for s in executor.read_statistics(
      artifacts[("StatisticsGen", "statistics")]))
  assert examples == 240 == summary.inputs
  assert "Run again" in text and sorted(os.listdir(report)) == sorted(
      ["index.html", MODEL_CARD_FILE] + images_of(text))
  card = (report / MODEL_CARD_FILE).read_text()
  assert (pushed / MODEL_CARD_FILE).read_text() == card and "image VAE of run again" in card
  assert sorted(os.listdir(pushed)) == sorted(os.listdir(summary.pushed_dir))  # no temporary
  assert ["source", "images: /data/x|y <b>z</b> second line"] in Parsed(
      markdown_as_html(card)).tables[0]


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
