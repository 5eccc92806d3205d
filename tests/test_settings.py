"""Each run setting is declared once, as a PipelineConfig field (config.setting): its flag on
`run` and `compile`, its check, Airflow's VAE_PIPELINE_ARGS, the components' arguments and the
run report's settings table all come from that field."""
import argparse
import dataclasses
import json
import re

import pytest

from vae_pipeline import config as config_lib
from vae_pipeline.cli import main as cli
from vae_pipeline.config import PipelineConfig

# Fields that are not run settings: what a cluster's `compile` sets from its own flags, and the
# source `resolved()` recognizes.
NOT_SETTINGS = {"source", "builtin_resolvers_only", "pipeline_root_uri", "serving_uri"}


def actions(parser):
  """{dest: action} of a parser (run's or compile's sub-parser)."""
  return {action.dest: action for action in parser._actions}  # pylint: disable=protected-access


def sub_parser(command):
  parser = argparse.ArgumentParser()
  commands = parser.add_subparsers(dest="command")
  settings = cli.settings_options()
  cli.add_run_parser(commands, settings)
  cli.cluster.add_parsers(commands, settings)
  return commands.choices[command]


def test_every_field_is_a_setting_or_set_by_the_cluster():
  fields = {field.name for field in dataclasses.fields(PipelineConfig)}
  settings = {field.name for field in config_lib.settings()}
  assert fields - settings == NOT_SETTINGS
  assert all(field.metadata["help"] for field in config_lib.settings())


@pytest.mark.parametrize("command, commands", [("run", config_lib.RUN),
                                               ("compile", (config_lib.SHARED,))])
def test_each_setting_is_a_flag_with_the_fields_help_and_default(command, commands):
  options = actions(sub_parser(command))
  defaults = PipelineConfig()
  for field in config_lib.settings(commands):
    if field.name == "beam_args":  # two flags: a preset and arguments replacing its own
      assert {"beam_preset", "beam_arg"} <= set(options)
      continue
    action = options[field.name]
    assert action.option_strings == [config_lib.flag_of(field)]
    assert action.help == field.metadata["help"].replace("%", "%%")
    default = (field.default if field.default is not dataclasses.MISSING
               else getattr(defaults, field.name))
    if isinstance(default, bool):  # the flag turns it over
      assert action.const is (not default)
    elif default is not None:
      assert action.default == default
  # `compile` has its own --data and --output-dir (cloud URIs, the compiled files' folder).
  if command == "compile":
    assert options["data"].help.startswith("the image source ExampleGen reads")


def test_flags_reach_the_config_and_checks_name_the_setting(tmp_path):
  args = cli.parse(["run", "--output-dir", str(tmp_path), "--clip-norm", "0.5",
                    "--train-buckets", "9", "--eval-buckets", "2", "--float32", "--no-cache",
                    "--epochs", "3", "--image-shape", "28x28x1", "--warm-start",
                    "--beam-preset", "multi-processing", "--beam-arg=--direct_num_workers=3"])
  config = cli.run_config(args)
  assert (config.clip_norm, config.train_buckets, config.eval_buckets) == (0.5, 9, 2)
  assert (config.mixed_precision, config.enable_cache, config.epochs) == (False, False, 3)
  assert config.warm_start and config.image_shape == (28, 28, 1)
  assert config.beam_args == ["--direct_running_mode=multi_processing",
                              "--direct_num_workers=3"]
  assert config.output_dir == str(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--train-workers", "0"], "train_workers must be at least 1, got 0"),
    (["--anomaly-quantile", "1.5"], "anomaly_quantile must be in (0, 1), got 1.5"),
    (["--max-bad-fraction", "1"], "max_bad_fraction must be in [0, 1), got 1.0"),
    (["--learning-rate", "-1"], "learning_rate must be positive, got -1.0"),
    (["--max-loss-increase", "-1"], "max_loss_increase must be at least 0.0, got -1.0"),
    (["--pipeline-name", "mnist_vae"], "pipeline_name must match"),
    (["--schema", "/no/such/schema.pbtxt"], "schema names no file: /no/such/schema.pbtxt"),
    (["--wait", "-1"], "wait_seconds must be at least 0.0, got -1.0"),
])
def test_a_bad_value_is_one_line_naming_the_setting(argv, message, capsys, tmp_path):
  code = cli.main(["run", "--output-dir", str(tmp_path), *argv])
  error = capsys.readouterr().err
  assert code == 2 and error.startswith("vae-pipeline run: error: ") and message in error
  assert error.count("\n") == 1
  with pytest.raises(ValueError, match=re.escape(message)):
    PipelineConfig(**config_lib.from_flags(cli.parse(["run", *argv]), config_lib.RUN))


def test_airflow_args_give_the_config_the_command_line_gives(tmp_path):
  argv = ["--output-dir", str(tmp_path), "--epochs", "5", "--latent-dim", "3", "--span-window",
          "2", "--max-loss", "300", "--float32", "--beam-arg=--direct_num_workers=2"]
  from_airflow = config_lib.from_command_line(argv, "VAE_PIPELINE_ARGS")
  from_cli = PipelineConfig(**config_lib.from_flags(cli.parse(["run", *argv]), config_lib.RUN))
  assert from_airflow == from_cli
  assert (from_airflow.epochs, from_airflow.latent_dim, from_airflow.max_loss) == (5, 3, 300.0)
  # How `run` runs the DAG here is not a setting of a scheduled DAG.
  for local in (["--wait", "3"], ["--orchestrator", "beam"]):
    with pytest.raises(SystemExit):
      config_lib.from_command_line(local, "VAE_PIPELINE_ARGS")
  run = cli.run_config(cli.parse(["run", *argv, "--wait", "3", "--orchestrator", "beam",
                                  "--image-shape", "28x28x1"]))
  assert (run.wait_seconds, run.orchestrator) == (3.0, "beam")


def test_components_get_the_settings_that_name_them():
  config = PipelineConfig(image_shape=(8, 8, 3), latent_dim=3, epochs=2, size_policy="pad",
                          max_bad_fraction=0.1, anomaly_quantile=0.9, train_workers=2)
  trainer = config.trainer_config()
  assert trainer == {field.name: (list(getattr(config, field.name))
                                  if field.name == "image_shape" else getattr(config, field.name))
                     for field in config_lib.settings() if "Trainer" in field.metadata["to"]}
  assert (trainer["latent_dim"], trainer["epochs"], trainer["anomaly_quantile"],
          trainer["train_workers"], trainer["image_shape"]) == (3, 2, 0.9, 2, [8, 8, 3])
  assert config.example_gen_config() == {"image_shape": [8, 8, 3], "size_policy": "pad",
                                         "max_bad_fraction": 0.1, "image_feature": "image"}
  assert config.transform_config() == {"image_shape": [8, 8, 3]}
  json.dumps(trainer)  # custom_config travels as JSON


def test_the_report_table_lists_every_setting_that_shapes_the_run():
  config = PipelineConfig(image_shape=(28, 28, 1), epochs=7, max_loss=None)
  rows = config_lib.settings_rows(config)
  names = [row[0] for row in rows]
  shared = [f.name for f in config_lib.settings((config_lib.SHARED,))]
  assert names == [name for name in shared if name not in ("enable_cache", "beam_args")]
  by_name = {row[0]: row for row in rows}
  assert by_name["epochs"][1:3] == ["--epochs", "7"]
  assert by_name["image_shape"][2] == "28x28x1" and by_name["max_loss"][2] == "default"
  assert by_name["mixed_precision"][1:3] == ["--float32", "True"]
  assert all(row[3] == f.metadata["help"] for row, f in zip(
      rows, [f for f in config_lib.settings((config_lib.SHARED,)) if f.name in by_name]))


def test_the_docs_table_of_run_options_is_the_parsers():
  from vae_pipeline.cli import options_doc  # pylint: disable=import-outside-toplevel
  assert options_doc.main(["--check"]) == 0, "run python -m vae_pipeline.cli.options_doc"
  table = options_doc.table()
  for field in config_lib.settings():
    if field.name != "beam_args":
      assert f"| `{config_lib.flag_of(field)}" in table
  assert "| `--output-dir` | `outputs` |" in table  # the declared default, not a local path
