"""ImageExampleGen's executor: any image source -> raw tf.Examples, in Beam, item by item.

Every input item becomes an example or a *bad input* with its reason. Bad inputs are written to
`bad_inputs.csv` in the Examples artifact; if their share exceeds `max_bad_fraction` (default 0)
the component fails with a message naming each one, and a copy of the list is kept under
`<pipeline root>/ExampleGen/bad_inputs/` (a failed run's artifacts are not kept).
"""
import csv
import io
import json
import os

import apache_beam as beam
from tfx.components.example_gen import base_example_gen_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from vae_pipeline.data import images
from vae_pipeline.data import records
from vae_pipeline.data import sources

BAD_INPUTS_FILE = "bad_inputs.csv"
# Custom properties of the Examples artifact.
INPUT_COUNT = "input_count"
BAD_INPUT_COUNT = "bad_input_count"
LABEL_NAMES = "label_names"
# Bad inputs listed in an error message; the full list is always in the CSV.
MAX_LISTED = 50


class BadInputsError(RuntimeError):
  """More inputs than allowed could not be read; the message names them."""


def settings_of(exec_properties):
  """The settings PipelineConfig hands ExampleGen (its example_gen_config): all of them."""
  config = exec_properties.get("custom_config") or {}
  if isinstance(config, str):
    config = json.loads(config)
  return {
      "image_shape": tuple(config["image_shape"]),
      "size_policy": config["size_policy"],
      "max_bad_fraction": float(config["max_bad_fraction"]),
      "image_feature": config["image_feature"],
  }


class _ToExamples(beam.DoFn):
  """A unit of work -> tf.Examples (main output) and (item, reason) pairs ('bad' output)."""

  def __init__(self, settings):
    self._settings = settings

  def process(self, unit):
    s = self._settings
    for item, payload, label in sources.read(unit, s["image_feature"]):
      try:
        pixels = images.normalize(payload, s["image_shape"], s["size_policy"])
      except images.BadInput as error:
        yield beam.pvalue.TaggedOutput("bad", (item, str(error)))
        continue
      yield records.to_example(pixels, label)


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Reads the (span-resolved) input pattern with data.sources; see the module docstring."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    report_dir = self._report_dir

    @beam.ptransform_fn
    def ImagesToExample(pipeline, exec_properties, split_pattern):  # pylint: disable=invalid-name
      settings = settings_of(exec_properties)
      _, units, names = sources.plan(exec_properties["input_base"], split_pattern)
      _write({"label_names": names}, os.path.join(report_dir, "plan.json"))
      results = (pipeline
                 | "Units" >> beam.Create(units)
                 | "ToExamples" >> beam.ParDo(_ToExamples(settings)).with_outputs("bad", main="ok"))
      _ = (results.ok | "CountGood" >> beam.combiners.Count.Globally()
           | "WriteGood" >> beam.Map(_write, os.path.join(report_dir, "good_count")))
      _ = (results.bad | "ListBad" >> beam.combiners.ToList()
           | "WriteBad" >> beam.Map(_write, os.path.join(report_dir, "bad.json")))
      return results.ok

    return ImagesToExample

  def Do(self, input_dict, output_dict, exec_properties):
    examples = artifact_utils.get_single_instance(output_dict["examples"])
    # Beam's workers write their counts here: inside the output artifact (through TFX's file
    # I/O), not a local temporary folder, so that a distributed runner's workers reach it too.
    self._report_dir = os.path.join(examples.uri, ".ingest-report")
    fileio.makedirs(self._report_dir)
    try:
      super().Do(input_dict, output_dict, exec_properties)
      good = int(_read(os.path.join(self._report_dir, "good_count")))
      bad = sorted(map(tuple, json.loads(_read(os.path.join(self._report_dir, "bad.json")))))
      names = json.loads(_read(os.path.join(self._report_dir, "plan.json")))["label_names"]
    finally:
      if fileio.exists(self._report_dir):
        fileio.rmtree(self._report_dir)

    bad_csv = os.path.join(examples.uri, BAD_INPUTS_FILE)
    write_bad_inputs(bad_csv, bad)
    examples.set_int_custom_property(INPUT_COUNT, good + len(bad))
    examples.set_int_custom_property(BAD_INPUT_COUNT, len(bad))
    if names:
      examples.set_string_custom_property(LABEL_NAMES, json.dumps(names))
    allowed = settings_of(exec_properties)["max_bad_fraction"]
    total = good + len(bad)
    if bad and len(bad) > allowed * total:
      kept = os.path.join(os.path.dirname(os.path.dirname(examples.uri)), "bad_inputs",
                          f"{os.path.basename(examples.uri)}.csv")
      fileio.makedirs(os.path.dirname(kept))
      fileio.copy(bad_csv, kept, overwrite=True)
      raise BadInputsError(describe_bad_inputs(bad, total, allowed, kept))
    if total == 0:
      raise BadInputsError("the source has no images")


def _write(value, path):
  with fileio.open(path, "w") as f:
    f.write(json.dumps(value) if not isinstance(value, int) else str(value))


def _read(path):
  with fileio.open(path, "r") as f:
    return f.read()


def write_bad_inputs(path, bad):
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(["input", "reason"])
  writer.writerows(bad)
  with fileio.open(path, "w") as f:
    f.write(text.getvalue())


def describe_bad_inputs(bad, total, allowed, csv_path):
  lines = [f"{len(bad)} of {total} inputs could not be used "
           f"({len(bad) / max(total, 1):.1%}; allowed: --max-bad-fraction {allowed:g}):"]
  lines += [f"  {item}: {reason}" for item, reason in bad[:MAX_LISTED]]
  if len(bad) > MAX_LISTED:
    lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
  lines.append(f"The full list: {csv_path}")
  return "\n".join(lines)
