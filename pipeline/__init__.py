"""vae-pipeline: a TFX pipeline that trains, evaluates and pushes a convolutional VAE.

Importing the package selects Keras 2 (`tf_keras`) before TensorFlow is imported anywhere:
after `import tfx`, `tf.keras` would be Keras 3, and TensorFlow Transform's layer is Keras 2.
"""
import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (the CLI also hides its import-time errors: cli.main).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Google client libraries warn on every import that Python 3.10 is old; TFX 1.16 needs it.
warnings.filterwarnings("ignore", message="You are using a non-supported Python version",
                        category=FutureWarning)
warnings.filterwarnings("ignore", message="Support for google-cloud-storage", category=FutureWarning)

__version__ = "0.1.0"


def __getattr__(name):
  """`vae_pipeline.RunReport`, the RunReport artifact type, imported only when asked for: TFX's
  Kubeflow V2 entry point imports a custom artifact type by its schema title
  (`vae_pipeline.RunReport`), and importing it here eagerly would import TFX with the package."""
  if name == "RunReport":
    from vae_pipeline.components.run_report.spec import RunReportArtifact  # pylint: disable=import-outside-toplevel
    return RunReportArtifact
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
