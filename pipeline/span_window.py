"""Training on a window of recent spans: a resolver strategy that gives the newest N spans of a
channel, one artifact per span (the newest ingestion of it: a span's data can be re-ingested).

TFX's SpanRangeStrategy would return every ingestion of each span in range, duplicates included.
It reads every Examples artifact of the pipeline (a channel named after its producer would be
read from the current run only).
The local runner supports custom strategies; TFX's Kubeflow V2 compiler does not (it knows only
LatestArtifactStrategy and LatestBlessedModelStrategy), so windows are local-only.
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
