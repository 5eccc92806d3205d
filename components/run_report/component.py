"""RunReport: after the Evaluator and Pusher, writes the run's HTML report, its pictures and the
model card (also into the pushed model's folder).

    report = RunReport(examples=..., statistics=..., model=..., model_run=..., evaluation=...,
                       blessing=..., pushed_model=..., loss_upper_bound=..., max_loss_increase=...,
                       source=..., settings=[[name, flag, value, help], ...])
    report.outputs["report"]  # a folder with index.html and model_card.md
"""
import json
from typing import List, Optional

from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import Channel

from vae_pipeline.components.run_report import executor
from vae_pipeline.components.run_report.spec import RunReportArtifact, RunReportSpec


class RunReport(base_component.BaseComponent):
  SPEC_CLASS = RunReportSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, examples: Channel, statistics: Channel, model: Channel, model_run: Channel,
               evaluation: Channel, blessing: Channel, loss_upper_bound: float,
               max_loss_increase: float, pushed_model: Optional[Channel] = None,
               source: Optional[str] = None, settings: Optional[List[List[str]]] = None):
    # Each only when given: an absent optional parameter leaves the component's properties
    # (its cache key, a compiled pipeline) as they were.
    optional = {"source": source} if source else {}
    if settings:
      optional["settings"] = json.dumps(settings)
    super().__init__(spec=RunReportSpec(
        examples=examples, statistics=statistics, model=model, model_run=model_run,
        evaluation=evaluation, blessing=blessing, pushed_model=pushed_model,
        loss_upper_bound=loss_upper_bound, max_loss_increase=max_loss_increase,
        report=Channel(type=RunReportArtifact), **optional))
