"""AnomaliesGate: a component that fails when ExampleValidator reported anomalies.

Downstream components that must not run on bad data declare it upstream
(`transform.add_upstream_node(gate)`).
"""
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from vae_pipeline.components.anomalies_gate import executor


@component
def AnomaliesGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):
  executor.check_anomalies(anomalies)
