"""TFX's Beam components on DirectRunner, without the TFX sdist built for remote workers.

Every Beam component's executor (ExampleGen, StatisticsGen, Transform, Evaluator) copies TFX's
whole installation to a new temporary folder and builds an sdist of it
(`tfx.utils.dependency_utils.make_beam_dependency_flags`), so that remote workers (Dataflow,
Flink) can install TFX. DirectRunner's workers are this process or its children, which import
the installed TFX already. Building it costs about two seconds per Beam component (four in a
run) and leaves ~50 MB in the temporary folder each time, never removed, so a machine that runs
the pipeline on a schedule fills its disk. Other runners keep TFX's behaviour.
"""
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tfx.utils import dependency_utils

# Beam's names for its local runner; no --runner at all means DirectRunner.
_DIRECT_RUNNERS = (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def skip_worker_packages_for_direct_runner():
  """Makes TFX leave the Beam arguments of DirectRunner pipelines as they are (idempotent)."""
  build_flags = dependency_utils.make_beam_dependency_flags
  if getattr(build_flags, "skips_direct_runner", False):
    return

  def flags(beam_pipeline_args):
    runner = PipelineOptions(beam_pipeline_args).view_as(StandardOptions).runner
    if runner in _DIRECT_RUNNERS:
      return list(beam_pipeline_args)
    return build_flags(beam_pipeline_args)

  flags.skips_direct_runner = True
  dependency_utils.make_beam_dependency_flags = flags
