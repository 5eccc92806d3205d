"""ImageExampleGen: TFX's file-based ExampleGen with an executor that reads image sources.

Spans, fingerprints (caching) and the hash split come from FileBasedExampleGen; what it reads is
decided by `vae_pipeline.data.sources` and the `custom_config` (image shape, size policy,
max_bad_fraction, image feature of TFRecord sources). The driver lists a local source with
`data.sources.scan`, which TFX's own listing cannot do for every folder (see driver.py).
"""
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from vae_pipeline.components.image_example_gen import driver
from vae_pipeline.components.image_example_gen import executor


class ImageExampleGen(FileBasedExampleGen):
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
  DRIVER_CLASS = driver.Driver
