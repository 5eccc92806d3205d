"""What a run did, read back from ML Metadata: how each component went, and the run's record
(components/run_report/record.py, the one the run report shows) from the artifacts it lists."""
import contextlib
import dataclasses
import json
import os
import pathlib
import sqlite3
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow.python.util import deprecation

from vae_pipeline.components.run_report import record as record_lib
from vae_pipeline.components.run_report import spec as run_report
from vae_pipeline.pipeline import EXAMPLE_GEN, RUN_REPORT
from vae_pipeline.models import features

# TFMA calls deprecated TensorFlow APIs when it reads an evaluation (`runs`, every summary); the
# warnings are for its authors, not our users.
deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access

# The custom property of an execution that says why it failed (or was interrupted): one line,
# recorded by the local runner (local_runner.record_failure), shown by `runs` and the summary.
FAILURE_REASON = "failure_reason"
# The pipeline run's custom property naming a component that failed before ML Metadata recorded
# its execution (with FAILURE_REASON beside it).
FAILED_COMPONENT = "failed_component"
# How the reason of a component Ctrl-C stopped begins.
INTERRUPTED = "interrupted"
# Execution states of a component that started and never finished.
UNFINISHED = ("NEW", "RUNNING", "UNKNOWN")


def open_store(metadata_path, writable=False):
  """The store, read-only unless `writable` (only while holding its lock: local_runner)."""
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
                                   if writable else
                                   metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
  return metadata_store.MetadataStore(config)


@dataclasses.dataclass
class ComponentRun:
  component: str
  state: str  # COMPLETE, CACHED, FAILED, RUNNING ...
  seconds: float
  outputs: Dict[str, List[str]]  # output key -> artifact URIs
  properties: Dict[str, dict]  # output key -> (custom) properties of its first artifact
  reason: Optional[str] = None  # FAILED: why, in one line (when the local runner recorded it)


@dataclasses.dataclass
class RunSummary(record_lib.RunRecord):
  """The run's record (what the report shows too) and how each component went."""
  components: List[ComponentRun] = dataclasses.field(default_factory=list)
  report: Optional[str] = None  # the run report's index.html
  wall_seconds: Optional[float] = None

  def component(self, name) -> Optional[ComponentRun]:
    return next((c for c in self.components if c.component == name), None)

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2)


def store_problem(metadata_path, pipeline_root=None, writable=False) -> Optional[str]:
  """Why the ML Metadata store cannot be used (one line), or None. Reads, never writes, but
  `writable` (the run holding the store's lock) lets SQLite roll back a transaction a killed
  run left in its journal, as ML Metadata's own opening would; read-only, such a store is not
  judged.

  A store SQLite cannot read is damaged. A store that is missing, empty (0 bytes) or older than
  the artifacts in the pipeline root (each output in a folder named by the id of the execution
  that wrote it) has lost their record: a new run would be handed the execution ids of earlier
  runs again, and its components would write into those runs' folders (Transform then fails on
  them).
  """
  size = os.path.getsize(metadata_path) if os.path.isfile(metadata_path) else None
  newest_execution = 0
  if size and not writable and os.path.exists(metadata_path + "-journal"):
    return None  # a hot journal: only a writer can tell
  if size:
    try:
      uri = (pathlib.Path(os.path.abspath(metadata_path)).as_uri()
             + ("?mode=rw" if writable else "?mode=ro"))
      with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        check = connection.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
          raise sqlite3.DatabaseError(check[0][0] if check else "quick_check found errors")
        tables = {name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "Execution" in tables:
          newest_execution = connection.execute(
              "SELECT COALESCE(MAX(id), 0) FROM Execution").fetchone()[0]
    except sqlite3.Error as error:
      return (f"the ML Metadata store {metadata_path} is damaged (SQLite: {error}): restore it "
              "from a backup, or pass a new --output-dir, or delete it"
              + (f" and the pipeline root {pipeline_root}" if pipeline_root else "")
              + " to start afresh (the record of the earlier runs is then lost)")
  newest_folder = _newest_execution_folder(pipeline_root) if pipeline_root else None
  if newest_folder is None or newest_folder[0] <= newest_execution:
    return None
  state = ("is missing" if size is None else "is empty (0 bytes)" if size == 0
           else "records no runs" if not newest_execution
           else f"is older than the artifacts beside it (it records executions up to id "
                f"{newest_execution}; {newest_folder[1]} was written by execution "
                f"{newest_folder[0]})")
  return (f"the ML Metadata store {metadata_path} {state}, but the pipeline root {pipeline_root} "
          "holds earlier runs' artifacts: a new run would reuse their execution ids and write "
          "into their folders. Restore the store from a backup, or pass a new --output-dir, or "
          f"delete {pipeline_root} too to start afresh")


def _newest_execution_folder(pipeline_root):
  """(id, path) of the newest execution's output folder in the pipeline root
  (ROOT/component/output/ID; not .system, whose driver folders have other numbers), or None."""
  if "://" in pipeline_root or not os.path.isdir(pipeline_root):
    return None
  newest = None
  for component in os.scandir(pipeline_root):
    if not component.is_dir():
      continue
    for output in os.scandir(component.path):
      if output.name.startswith(".") or not output.is_dir():
        continue
      for entry in os.scandir(output.path):
        if entry.name.isdigit() and (newest is None or int(entry.name) > newest[0]):
          newest = (int(entry.name), entry.path)
  return newest


def run_ids(store) -> List[str]:
  """Every pipeline run recorded in the store, oldest first."""
  runs = store.get_contexts_by_type("pipeline_run")
  return [c.name for c in sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))]


def format_runs(summaries: List[RunSummary], running: Optional[str] = None) -> str:
  """One line per run: when, data span, eval metrics, blessed, pushed where. A run with a
  component that started and never finished is `running` (the run id of the run in progress,
  if any) or was killed."""
  lines = [f"{'run':<28} {'span':>4} {'inputs':>7} {'loss':>8} {'neg_elbo':>9} "
           f"{'blessed':>7}  pushed to"]
  for summary in summaries:
    span = summary.span if summary.span is not None else "-"
    blessed = {True: "yes", False: "no", None: "-"}[summary.blessed]
    pushed = summary.pushed_dir or outcome(summary, running) or "-"
    metrics = summary.metrics
    inputs = f"{summary.inputs:,}" if summary.inputs is not None else "-"
    lines.append(f"{summary.run_id[:26]:<28} {span!s:>4} {inputs:>7} "
                 f"{_number(metrics.get(features.LOSS), 8)} "
                 f"{_number(metrics.get(features.NEG_ELBO), 9)} {blessed:>7}  {pushed}")
  return "\n".join(lines)


def outcome(summary: RunSummary, running: Optional[str] = None) -> Optional[str]:
  """What stopped a run that did not finish: `(failed: Trainer)`, `(interrupted: Trainer)`,
  `(running: Trainer)` or `(unfinished: killed during Trainer)`; None for a finished run."""
  failed = [c for c in summary.components if c.state == "FAILED"]
  if failed:
    interrupted = all((c.reason or "").startswith(INTERRUPTED) for c in failed)
    return (f"({'interrupted' if interrupted else 'failed'}: "
            f"{', '.join(c.component for c in failed)})")
  unfinished = [c.component for c in summary.components if c.state in UNFINISHED]
  if unfinished:
    if summary.run_id == running:
      return f"(running: {', '.join(unfinished)})"
    return f"(unfinished: killed during {', '.join(unfinished)})"
  return None


def _number(value, width, digits=1):
  """A metric right-aligned in `width`; `-` when there is none."""
  return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def latest_run_id(store):
  runs = store.get_contexts_by_type("pipeline_run")
  if not runs:
    raise LookupError("no pipeline run recorded in this metadata store")
  return max(runs, key=lambda c: (c.create_time_since_epoch, c.id)).name


def component_runs(store, run_id) -> List[ComponentRun]:
  """Every execution of the run, in execution order, with its output artifact URIs."""
  run = store.get_context_by_type_and_name("pipeline_run", run_id)
  executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
  result = []
  for execution in executions:
    node = next(c for c in store.get_contexts_by_execution(execution.id)
                if c.type == "node")
    outputs, properties = {}, {}
    events = [e for e in store.get_events_by_execution_ids([execution.id])
              if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    for event in events:
      key = event.path.steps[0].key if event.path.steps else ""
      artifact = artifacts[event.artifact_id]
      outputs.setdefault(key, []).append(artifact.uri)
      properties.setdefault(key, {name: record_lib.value(v) for name, v in
                                  list(artifact.properties.items())
                                  + list(artifact.custom_properties.items())})
    seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1e3
    reason = execution.custom_properties.get(FAILURE_REASON)
    result.append(ComponentRun(
        component=node.name.split(".", 1)[-1],
        state=metadata_store_pb2.Execution.State.Name(execution.last_known_state),
        seconds=seconds, outputs=outputs, properties=properties,
        reason=reason.string_value if reason is not None else None))
  # A component stopped before ML Metadata recorded its execution (Ctrl-C while its inputs were
  # resolved): the local runner names it on the run.
  stopped = run.custom_properties.get(FAILED_COMPONENT)
  if stopped is not None and not any(c.component == stopped.string_value for c in result):
    reason = run.custom_properties.get(FAILURE_REASON)
    result.append(ComponentRun(component=stopped.string_value, state="FAILED", seconds=0.0,
                               outputs={}, properties={},
                               reason=reason.string_value if reason is not None else None))
  return result


def summarize(metadata_path, run_id=None) -> RunSummary:
  store = open_store(metadata_path)
  run_id = run_id or latest_run_id(store)
  components = component_runs(store, run_id)
  by_name = {c.component: c for c in components}

  def output(component, key, finished=False) -> Optional[record_lib.Output]:
    """The component's first `key` artifact; with `finished`, only if the component finished."""
    run = by_name.get(component)
    if run is None or not run.outputs.get(key) or (
        finished and run.state not in ("COMPLETE", "CACHED")):
      return None
    return record_lib.Output(run.outputs[key][0], run.properties[key])

  record = record_lib.read(
      run_id, examples=output(EXAMPLE_GEN, "examples"), model=output("Trainer", "model"),
      evaluation=output("Evaluator", "evaluation", finished=True),
      pushed_model=output("Pusher", "pushed_model", finished=True))
  report = output(RUN_REPORT, "report", finished=True)
  return RunSummary(**vars(record), components=components,
                    report=os.path.join(report.uri, run_report.REPORT_FILE) if report else None)


def format_summary(summary: RunSummary, loss_upper_bound, max_loss_increase) -> str:
  lines = [f"Run {summary.run_id}", "", "Component                       state      seconds"]
  for c in summary.components:
    lines.append(f"  {c.component:<29} {c.state:<10} {c.seconds:7.1f}")
    if c.reason:
      lines.append(f"    {c.reason}")
  if summary.wall_seconds is not None:
    lines.append(f"  {'total wall time':<29} {'':<10} {summary.wall_seconds:7.1f}")
  if summary.inputs is not None:
    lines += ["", f"Data: {summary.inputs:,} inputs, {summary.bad_inputs:,} skipped as unreadable"
              + (f" (listed in {summary.bad_inputs_file})" if summary.bad_inputs else "")]
    if summary.label_names:
      lines.append("Labels from class folders: " + ", ".join(
          f"{i}={name}" for i, name in enumerate(summary.label_names)))
  if summary.metrics:
    lines += ["", "Eval split, mean nats per image   candidate   latest blessed"]
    for name in features.LOSS_OUTPUTS:
      base = summary.baseline_metrics.get(name)
      base_text = f"{base:14.2f}" if base is not None else f"{'-':>14}"
      lines.append(f"  {name:<32} {summary.metrics.get(name, float('nan')):9.2f} {base_text}")
    count = summary.metrics.get("example_count")
    if count is not None:
      lines.append(f"  {'examples':<32} {count:9.0f}")
  if summary.label_metrics:
    names = summary.label_names or []
    lines += ["", "Per label (candidate)      examples    loss  neg_elbo  nll_iw"]
    for label, values in summary.label_metrics.items():
      name = f"{label}={names[int(label)]}" if int(label) < len(names) else label
      lines.append(f"  {name:<24} {values.get('example_count', 0):8.0f} "
                   f"{values.get(features.LOSS, float('nan')):7.1f} "
                   f"{values.get(features.NEG_ELBO, float('nan')):9.1f} "
                   f"{values.get(features.NLL_IW, float('nan')):7.1f}")
  if summary.blessed is not None:
    loss = summary.metrics.get(features.LOSS, float("nan"))
    rule = (f"loss <= {loss_upper_bound:.1f} and at most {max_loss_increase:.2f} above the "
            "latest blessed model")
    lines.append("")
    if summary.blessed:
      against = ("no other blessed model to compare with" if not summary.baseline_metrics else
                 f"change {loss - summary.baseline_metrics[features.LOSS]:+.2f}")
      lines.append(f"Blessed: loss {loss:.2f} passes ({rule}; {against}).")
    else:
      lines.append(f"NOT blessed ({rule}):")
      lines += [f"  {reason}" for reason in summary.blessing_reasons]
  lines.append(f"Pushed to: {summary.pushed_dir}" if summary.pushed_dir else "Not pushed.")
  if summary.report:
    lines.append(f"Report: {summary.report}")
  return "\n".join(lines)
