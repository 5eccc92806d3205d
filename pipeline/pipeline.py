"""The whole DAG in one function: ingest, validate, transform, train, evaluate, push, report."""
# TFX's own modules, not `tfx.v1`: that API also imports the Google Cloud clients of
# `tfx.v1.extensions`, seconds of every command, cached re-runs included.
from tfx.components import (Evaluator, ExampleValidator, Pusher, SchemaGen, StatisticsGen,
                            Trainer, Transform)
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2
from tfx.types import Channel, standard_artifacts

from vae_pipeline.components.anomalies_gate.component import AnomaliesGate
from vae_pipeline.components.image_example_gen.component import ImageExampleGen
from vae_pipeline.components.run_report.component import RunReport
from vae_pipeline import config as config_lib
from vae_pipeline.config import PipelineConfig
from vae_pipeline.resolvers import LatestOtherBlessedModelStrategy, LatestSpansStrategy
from vae_pipeline.models import evaluation

# Entry points, by dotted path: TFX's module_file= would pip-install a wheel at run time.
PREPROCESSING_FN = "vae_pipeline.models.preprocessing.preprocessing_fn"
RUN_FN = "vae_pipeline.models.trainer.run_fn"

# Component ids that do not depend on which implementation is chosen.
EXAMPLE_GEN = "ExampleGen"
SCHEMA_GEN = "SchemaGen"
RUN_REPORT = "RunReport"
BASELINE_RESOLVER = "latest_blessed_model_resolver"


def create_example_gen(config: PipelineConfig) -> ImageExampleGen:
  """Reads the latest span of the source, brings every image to one shape, splits 4:1 by hash."""
  config = config.resolved()
  return ImageExampleGen(
      input_base=config.source.input_base,
      input_config=example_gen_pb2.Input(splits=[
          example_gen_pb2.Input.Split(name="single_split", pattern=config.source.pattern)]),
      output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
          example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=config.train_buckets),
          example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=config.eval_buckets),
      ])),
      custom_config=config.example_gen_config()).with_id(EXAMPLE_GEN)


def create_pipeline(config: PipelineConfig, metadata_connection_config=None) -> Pipeline:
  """Builds the pipeline; runners choose where it runs and which metadata store it uses."""
  config = config.resolved()
  # Ingest any image source as raw tf.Examples (`image` PNG bytes, optional `label`).
  example_gen = create_example_gen(config)

  # Validate: statistics, an inferred schema, anomalies; stop before training on anomalies.
  statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
  if config.schema:
    schema_gen = ImportSchemaGen(schema_file=config.schema).with_id(SCHEMA_GEN)
  else:
    schema_gen = SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
  anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

  # Train on this span, or on the newest `span_window` spans (each span's newest ingestion).
  training_examples, latest_spans = example_gen.outputs["examples"], None
  if config.span_window > 1:
    if config.builtin_resolvers_only:
      raise ValueError("--span-window needs a custom resolver, which TFX's Kubeflow V2 compiler "
                       "does not support; windows run locally and on Airflow")
    latest_spans = Resolver(
        strategy_class=LatestSpansStrategy, config={"num_spans": config.span_window},
        examples=Channel(type=standard_artifacts.Examples),  # every run's, not just this one's
    ).with_id("latest_spans_resolver")
    latest_spans.add_upstream_node(example_gen)  # this run's span is one of them
    training_examples = latest_spans.outputs["examples"]

  # Normalize: PNG -> float32 [H, W, C] in [0, 1].
  transform = Transform(
      examples=training_examples,
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      custom_config=config.transform_config())
  transform.add_upstream_node(anomalies_gate)

  # Warm start (optional): the latest blessed model's weights are the starting point.
  warm_start_model = None
  if config.warm_start:
    warm_start_model = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("warm_start_model_resolver")

  trainer = Trainer(
      run_fn=RUN_FN,
      base_model=warm_start_model.outputs["model"] if warm_start_model else None,
      examples=transform.outputs["transformed_examples"],
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      train_args=trainer_pb2.TrainArgs(splits=["train"]),
      eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
      custom_config=config.trainer_config())

  # Compare with the latest blessed model (none on the first run), never with the candidate itself:
  # a re-run whose Trainer was cached then finds the Evaluator cached too.
  baseline_inputs = dict(model=Channel(type=standard_artifacts.Model),
                         model_blessing=Channel(type=standard_artifacts.ModelBlessing))
  if config.builtin_resolvers_only:
    baseline_strategy = LatestBlessedModelStrategy
  else:
    baseline_strategy = LatestOtherBlessedModelStrategy
    baseline_inputs["candidate"] = trainer.outputs["model"]
  latest_blessed_model = Resolver(strategy_class=baseline_strategy,
                                  **baseline_inputs).with_id(BASELINE_RESOLVER)

  # The serving signature reads raw examples, so the Evaluator gets ExampleGen's eval split.
  evaluator = Evaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      baseline_model=latest_blessed_model.outputs["model"],
      eval_config=evaluation.eval_config(config.loss_upper_bound, config.max_loss_increase))

  pusher = Pusher(
      model=trainer.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.serving_dir)))

  # What a person looks at: an HTML page with the run's numbers and pictures.
  run_report = RunReport(
      examples=example_gen.outputs["examples"],
      statistics=statistics_gen.outputs["statistics"],
      model=trainer.outputs["model"],
      model_run=trainer.outputs["model_run"],
      evaluation=evaluator.outputs["evaluation"],
      blessing=evaluator.outputs["blessing"],
      pushed_model=pusher.outputs["pushed_model"],
      loss_upper_bound=config.loss_upper_bound,
      max_loss_increase=config.max_loss_increase,
      settings=config_lib.settings_rows(config)).with_id(RUN_REPORT)

  return Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=config.pipeline_root,
      components=[node for node in (
          example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
          latest_spans, transform, warm_start_model, trainer, latest_blessed_model, evaluator,
          pusher, run_report) if node is not None],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=config.beam_args)
