"""RunReport's inputs, parameters and output: everything a run produced that a person looks at."""
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter


# The page inside the report artifact's folder.
REPORT_FILE = "index.html"
# The model card (Markdown), beside the page and in the pushed model's folder.
MODEL_CARD_FILE = "model_card.md"


class RunReportArtifact(artifact.Artifact):
  """A folder with `index.html`, the PNGs it shows and `model_card.md`; static, opens without a
  network."""
  # `namespace.Name`: the form Kubeflow V2 accepts as the schema title of a custom type.
  TYPE_NAME = "vae_pipeline.RunReport"


class RunReportSpec(ComponentSpec):
  PARAMETERS = {
      # The blessing rule, stated next to the numbers it compared (config.py holds the values).
      "loss_upper_bound": ExecutionParameter(type=float),
      "max_loss_increase": ExecutionParameter(type=float),
      # Where the images came from, in words, for the model card (e.g. `images: /data/pets`).
      "source": ExecutionParameter(type=str, optional=True),
      # The run's settings as JSON rows [name, flag, value, what it does]
      # (vae_pipeline.config.settings_rows), for the report's settings table.
      "settings": ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {
      "examples": ChannelParameter(type=standard_artifacts.Examples),  # raw, with labels if any
      "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
      "model": ChannelParameter(type=standard_artifacts.Model),
      "model_run": ChannelParameter(type=standard_artifacts.ModelRun),  # history.json
      "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
      "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
      "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel, optional=True),
  }
  OUTPUTS = {
      "report": ChannelParameter(type=RunReportArtifact),
  }
