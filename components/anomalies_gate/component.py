"""AnomaliesGate: a component that fails when ExampleValidator reported anomalies.

Downstream components that must not run on bad data declare it upstream
(`transform.add_upstream_node(gate)`).
"""
from tfx import v1 as tfx

from vae_pipeline.components.anomalies_gate import executor


@tfx.dsl.components.component
def AnomaliesGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]):
  executor.check_anomalies(anomalies)
