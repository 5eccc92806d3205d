"""Gathers what a run produced (data, training, evaluation, blessing, push) and writes the report:
`index.html` (page.py) and its figures (client/pictures.py), in the output artifact's folder,
and the model card `model_card.md` beside it and, when the model was pushed, in the pushed model's
folder (so that it travels with the model)."""
import dataclasses
import glob
import json
import os
import time
from typing import Dict, List, Optional

import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from vae_pipeline.client import pictures
from vae_pipeline.client import use
from vae_pipeline.components.run_report import page
from vae_pipeline.components.run_report import record as record_lib
from vae_pipeline.components.run_report.spec import MODEL_CARD_FILE, REPORT_FILE
from vae_pipeline.models import anomaly
from vae_pipeline.models import features

LATENT_POINTS = 2000  # eval images encoded for the latent plot
RECONSTRUCTED = 10
STATISTICS_FILE = "FeatureStats.pb"  # StatisticsGen's output per split


@dataclasses.dataclass
class SplitStatistics:
  name: str
  examples: int
  features: List[dict]  # name, type, present (fraction), summary


@dataclasses.dataclass
class Facts(record_lib.RunRecord):
  """Everything the page states, in numbers and words (figures are files beside it): the run's
  record (what the printed summary shows too) and what only the report shows."""
  written: str = ""  # local time the report was written
  image_shape: tuple = ()
  latent_dim: int = 0
  splits: List[SplitStatistics] = dataclasses.field(default_factory=list)
  history: dict = dataclasses.field(default_factory=dict)
  loss_upper_bound: float = float("nan")
  max_loss_increase: float = 0.0
  figures: Dict[str, str] = dataclasses.field(default_factory=dict)  # name -> file in the folder
  source: Optional[str] = None  # where the images came from, in words (the `source` parameter)
  # The anomaly threshold on the `score` signature's anomaly score, the quantile of the eval
  # split's scores it is, and the share of normal images it flags; None: not recorded.
  anomaly_quantile: Optional[float] = None
  anomaly_threshold: Optional[float] = None
  false_positive_rate: Optional[float] = None
  # The run's settings, [name, flag, value, what it does] (the `settings` parameter).
  settings: List[List[str]] = dataclasses.field(default_factory=list)


def _run_of(report_uri):
  """The run's id where the orchestrator gives none (TFX's Kubeflow V2 entry point): the folder
  above the task's, as Vertex AI lays out `<root>/<job id>/<task>/report`."""
  parts = report_uri.rstrip("/").split("/")
  return parts[-3] if len(parts) >= 3 else "-"


class Executor(base_executor.BaseExecutor):

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    single = lambda key: artifact_utils.get_single_instance(input_dict[key])
    pushed = input_dict.get("pushed_model") or []
    run_id = (self._context.pipeline_run_id if self._context else None) or _run_of(
        artifact_utils.get_single_instance(output_dict["report"]).uri)
    # The blessing input orders the report after the decision; the record reads the decision
    # from the evaluation (its validation result), as the printed summary does.
    write_report(
        artifact_utils.get_single_instance(output_dict["report"]).uri,
        examples=single("examples"), statistics=single("statistics"), model=single("model"),
        model_run=single("model_run"), evaluation=single("evaluation"),
        pushed_model=pushed[0] if pushed else None,
        loss_upper_bound=exec_properties["loss_upper_bound"],
        max_loss_increase=exec_properties["max_loss_increase"], run_id=run_id,
        source=exec_properties.get("source"),
        settings=json.loads(exec_properties.get("settings") or "[]"))


def write_report(out_dir, examples, statistics, model, model_run, evaluation, pushed_model,
                 loss_upper_bound, max_loss_increase, run_id, source=None, settings=()) -> str:
  """Writes index.html, its PNGs and model_card.md into out_dir, and model_card.md into the
  pushed model's folder when the model was pushed; returns the page's path."""
  facts = gather(examples, statistics, model, model_run, evaluation, pushed_model,
                 loss_upper_bound, max_loss_increase, run_id, source, settings)
  draw_figures(facts, examples.uri, out_dir)
  card = page.render_card(facts)
  write_atomically(os.path.join(out_dir, MODEL_CARD_FILE), card)
  if facts.pushed_dir:
    write_atomically(os.path.join(facts.pushed_dir, MODEL_CARD_FILE), card)
  path = os.path.join(out_dir, REPORT_FILE)
  io_utils.write_string_file(path, page.render(facts))
  return path


def write_atomically(path, text):
  """A reader (a model server watching the folder) sees the whole file or none of it."""
  temporary = f"{path}.tmp-{os.getpid()}"
  io_utils.write_string_file(temporary, text)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def gather(examples, statistics, model, model_run, evaluation, pushed_model, loss_upper_bound,
           max_loss_increase, run_id, source=None, settings=()) -> Facts:
  """The run's record (record.read) from the TFX artifacts, and what only the report shows."""
  record = record_lib.read(
      run_id, examples=record_lib.Output.of(examples), model=record_lib.Output.of(model),
      evaluation=record_lib.Output.of(evaluation),
      pushed_model=record_lib.Output.of(pushed_model) if pushed_model is not None else None)
  with tf.io.gfile.GFile(os.path.join(model_run.uri, features.HISTORY_FILE)) as f:
    history = json.load(f)
  return Facts(
      **vars(record), written=time.strftime("%Y-%m-%d %H:%M %Z"),
      image_shape=tuple(history.get("config", {}).get("image_shape", ())),
      latent_dim=int(history.get("config", {}).get("latent_dim", 0)),
      splits=read_statistics(statistics), history=history,
      loss_upper_bound=loss_upper_bound, max_loss_increase=max_loss_increase,
      source=source or None, settings=[list(row) for row in settings],
      **anomaly_facts(record.model_dir))


def anomaly_facts(model_dir):
  """The anomaly threshold the model carries (models/anomaly.py), for the card; none for a model
  exported before the score was calibrated."""
  path = os.path.join(model_dir, *anomaly.CALIBRATION_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    calibration = json.load(f)
  return dict(anomaly_quantile=calibration["anomaly_quantile"],
              anomaly_threshold=calibration["threshold"],
              false_positive_rate=calibration.get("held_out_false_positive_rate"))


def read_statistics(statistics) -> List[SplitStatistics]:
  """Examples per split and, per feature, how often it is present and a one-line summary."""
  splits = []
  for split in artifact_utils.decode_split_names(statistics.split_names):
    path = os.path.join(artifact_utils.get_split_uri([statistics], split), STATISTICS_FILE)
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(io_utils.read_bytes_file(path))
    dataset = stats.datasets[0]
    rows = []
    for feature in dataset.features:
      kind = feature.WhichOneof("stats")
      if kind == "num_stats":
        common, numbers = feature.num_stats.common_stats, feature.num_stats
        summary = f"{numbers.min:g} to {numbers.max:g}, mean {numbers.mean:.2f}"
      elif kind == "string_stats":
        common = feature.string_stats.common_stats
        summary = f"{feature.string_stats.avg_length:.0f} bytes on average"
      else:
        common = feature.bytes_stats.common_stats
        summary = f"{feature.bytes_stats.avg_num_bytes:.0f} bytes on average"
      rows.append(dict(
          name=".".join(feature.path.step),
          type=statistics_pb2.FeatureNameStatistics.Type.Name(feature.type),
          present=common.num_non_missing / max(1, dataset.num_examples), summary=summary))
    splits.append(SplitStatistics(split, int(dataset.num_examples), rows))
  return splits


def read_eval_examples(examples_uri, limit) -> List[bytes]:
  """The first `limit` serialized raw examples of the eval split."""
  files = sorted(glob.glob(os.path.join(examples_uri, "Split-eval", "*")))
  return [r.numpy() for r in
          tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)]


def labels_of(serialized) -> List[Optional[int]]:
  parsed = tf.io.parse_example(serialized, {
      features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1)})
  return [None if label < 0 else int(label) for label in parsed[features.LABEL_KEY].numpy()]


def draw_figures(facts: Facts, examples_uri, out_dir):
  """Fills facts.figures with the PNGs written into out_dir."""
  tf.io.gfile.makedirs(out_dir)
  model = use.Model(facts.model_dir)
  path = lambda name: os.path.join(out_dir, name)
  figures = facts.figures
  figures["training_curves"] = pictures.training_curves_figure(facts.history,
                                                               path("training_curves.png"))
  examples = read_eval_examples(examples_uri, LATENT_POINTS)
  figures["reconstructions"] = pictures.reconstructions_figure(
      model.loaded, examples[::max(1, len(examples) // RECONSTRUCTED)][:RECONSTRUCTED],
      path("reconstructions.png"))
  figures["prior_samples"] = pictures.prior_samples_figure(model.loaded, path("prior_samples.png"))
  means = model.on_examples(features.ENCODE_SIGNATURE, examples)[features.Z_MEAN]
  figures["latent"] = pictures.latent_figure(means, labels_of(examples), path("latent.png"),
                                             facts.label_names)
  if features.PERCENTILE in model.signature(features.SCORE_SIGNATURE).structured_outputs:
    scored = model.on_examples(features.SCORE_SIGNATURE, examples)
    figures["anomaly"] = pictures.anomaly_figure(
        scored[features.SCORE], facts.anomaly_threshold, facts.anomaly_quantile, examples,
        path("anomaly.png"))
  if model.latent_dim == 2:
    figures["manifold"] = use.save_picture(use.manifold(model), path("manifold.png"), scale=2)
  if facts.label_metrics:
    figures["label_metrics"] = pictures.label_metrics_figure(
        facts.label_metrics, path("label_metrics.png"), facts.label_names)
  # The page refers to its pictures by file name: the folder can be moved or served as is.
  facts.figures = {name: os.path.basename(file) for name, file in figures.items()}
