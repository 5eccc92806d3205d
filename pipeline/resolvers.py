"""This pipeline's resolver strategies (which artifacts a Resolver hands downstream).

- LatestSpansStrategy: the newest N spans of a channel, one artifact per span (the newest ingestion
  of it: a span's data can be re-ingested). TFX's SpanRangeStrategy would return every ingestion of
  each span in range, duplicates included. It reads every Examples artifact of the pipeline (a
  channel named after its producer would be read from the current run only).
- LatestOtherBlessedModelStrategy: the Evaluator's baseline, i.e. the latest blessed model that is
  not the candidate. TFX's LatestBlessedModelStrategy hands a re-run whose Trainer was cached its
  own candidate as baseline: the Evaluator then runs again only to compare a model with itself.

The local and Airflow runners run custom strategies; TFX's Kubeflow V2 compiler knows only
LatestArtifactStrategy and LatestBlessedModelStrategy (PipelineConfig.builtin_resolvers_only).
"""
from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver


# ExampleGen records these as custom properties (`artifact.span` reads a declared one: 0 here).
SPAN, VERSION = "span", "version"


def _int_property(artifact, name):
  # TFX once stored span as a string: accept both.
  text = artifact.get_string_custom_property(name)
  return int(text) if text else artifact.get_int_custom_property(name)


def _age(artifact):
  return _int_property(artifact, VERSION), artifact.id


class LatestSpansStrategy(resolver.ResolverStrategy):

  def __init__(self, num_spans: int):
    if num_spans < 1:
      raise ValueError(f"num_spans must be at least 1, got {num_spans}")
    self._num_spans = num_spans

  def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                        ) -> Optional[Dict[str, List[types.Artifact]]]:
    result = {}
    for key, artifacts in input_dict.items():
      newest = {}
      # Ingested examples carry a span; Transform's (also of type Examples) do not.
      for artifact in (a for a in artifacts if a.has_custom_property(SPAN)):
        span = _int_property(artifact, SPAN)
        kept = newest.get(span)
        if kept is None or _age(artifact) > _age(kept):
          newest[span] = artifact
      result[key] = [newest[span] for span in sorted(newest, reverse=True)[:self._num_spans]]
    return result if all(result.values()) else None


# What the Evaluator records on its ModelBlessing artifacts (tfx.components.evaluator.constants).
CURRENT_MODEL_ID, BLESSED = "current_model_id", "blessed"


class LatestOtherBlessedModelStrategy(resolver.ResolverStrategy):
  """Inputs `model` and `model_blessing` (every one of the pipeline) and `candidate` (this run's
  Trainer output); gives the latest blessed model that is not the candidate, or none."""

  def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                        ) -> Optional[Dict[str, List[types.Artifact]]]:
    candidate = input_dict.get("candidate", [])
    # The IR-based runners hand this run's model only; TFX's older launcher (Airflow) hands every
    # model the Trainer ever made, of which this run's is the newest (unless its Trainer was
    # cached: then the baseline may be the candidate itself, as with TFX's own strategy).
    candidate_id = max((a.id for a in candidate), default=None)
    blessings = {blessing.get_int_custom_property(CURRENT_MODEL_ID): blessing
                 for blessing in input_dict.get("model_blessing", [])
                 if blessing.get_int_custom_property(BLESSED) == 1}
    # Every input key stays in the result (TFX's input graph expects them all). `candidate` is
    # this run's model only: the older launcher records every output as an event of this
    # resolver's execution, and ML Metadata refuses an artifact output twice by one execution
    # (an earlier model under `candidate` and again under `model`).
    result = {"model": [], "model_blessing": [],
              "candidate": [a for a in candidate if a.id == candidate_id]}
    for model in sorted(input_dict.get("model", []), key=lambda a: a.id, reverse=True):
      if model.id in blessings and model.id != candidate_id:
        result.update(model=[model], model_blessing=[blessings[model.id]])
        break
    return result
