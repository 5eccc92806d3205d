"""A TEST HARNESS, not an orchestrator: executes a compiled Kubeflow Pipelines v2 / Vertex AI
pipeline (pipeline.yaml's PipelineSpec, or pipeline_job.json's PipelineJob) on this machine,
task by task, the way KFP's driver and launcher (or Vertex AI Pipelines) would feed each
task's container. Nothing here is used by the product; tests/test_kubeflow_executed.py uses it.

What it does as KFP does:
  * reads the compiled file with kfp's own protos (`kfp.pipeline_spec.pipeline_spec_pb2`);
    unknown fields are an error;
  * walks the root DAG in dependency order (`dependentTasks` and the producers of input
    artifacts and parameters); the first failed task fails the run and no further task starts
    (Argo's and Vertex's fail-fast);
  * builds each task's `ExecutorInput` as the driver does: input artifacts are the upstream
    tasks' output artifacts (name, type, uri and the metadata their executor reported);
    parameters from constants, from the pipeline's input parameters (the runtime value given
    for the run, else the `defaultValue`) or from upstream output parameters, in the form the
    spec's schema version uses (2.0.0: the deprecated `inputs.parameters` of `Value`s, which
    TFX's entry point reads for that schema; 2.1.0: `inputs.parameterValues`); output artifacts
    with a fresh name and a URI under the pipeline root
    (`<root>/<run id>/<task>_<task id>/<output key>`); `outputs.outputFile` beside them;
  * runs the container's exact `command` + `args`, with `{{$}}` (the ExecutorInput as JSON)
    and the other placeholders of the ExecutorInput contract substituted (an unknown
    placeholder is an error), as a subprocess. The one change: a leading `python`/`python3`
    (the image's interpreter) becomes this venv's interpreter (`sys.executable`), and the
    environment gets the Dockerfile's `ENV` lines, as the image would;
  * runs a container's `lifecycle.preCacheCheck` first (ExampleGen's driver), with the same
    ExecutorInput; its ExecutorOutput (the output metadata file) updates the parameters and
    output artifacts' metadata passed to the main command, as the proto's Lifecycle contract
    says (or less: `driver_updates`); the file stays where the executor reads it too (TFX's
    entry point takes the driver's parameters from it);
  * reads back the executor's ExecutorOutput (`outputFile`): the output artifacts' metadata
    (and output parameters) downstream tasks receive;
  * answers resolver tasks (`resolver.outputArtifactQueries`) from the artifacts of earlier
    runs, kept in a small artifact store (JSON, under the pipeline root, across runs): the
    filter is parsed as written (`schema_title=`/`artifact_type=`, `state=`, `name=`, `uri=`,
    `metadata.<key>.number_value|string_value|bool_value` with = != < <= > >=,
    `in_context("<pipeline>")`, `AND`; its `{{$.inputs.artifacts[...]...}}` placeholders are
    substituted first); scoped to the pipeline's context when no `in_context` is given; the
    newest first, `limit` (default 1) of them, as the proto documents (a query whose
    placeholder names an input the upstream resolver did not find matches nothing).

What it cannot do: pods, images (the venv stands in for the image; the Dockerfile's build is
not exercised), service accounts and cloud credentials, gs:// (the test rewrites the cloud
URIs to local folders, see `localize`), KFP's or Vertex's ML Metadata server (the JSON store
stands in; only outputs of succeeded tasks are recorded, as LIVE), caching (every task runs;
`cachingOptions` are ignored), retries, parallel tasks, nested DAGs, iterators and trigger
conditions (refused, not ignored), resource requests, and the KFP API server's own checks.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional

import yaml
from google.protobuf import json_format
from google.protobuf import struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

STORE_FILE = os.path.join(".kfp_harness", "metadata.json")
LOGS_DIR = os.path.join(".kfp_harness", "logs")
WORKDIRS = os.path.join(".kfp_harness", "workdirs")
ARTIFACT_NAME = "projects/kfp-harness/locations/local/metadataStores/default/artifacts/{id}"
INTERPRETERS = ("python", "python3")
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT_DIR, "Dockerfile")


class HarnessError(Exception):
  """The compiled pipeline asks for something the harness (and maybe KFP) cannot do."""


# ----------------------------------------------------------------------------- files

def load_spec(path_or_dict) -> pb.PipelineSpec:
  """pipeline.yaml (or its dict) as a PipelineSpec; an unknown field is an error."""
  document = path_or_dict
  if isinstance(path_or_dict, str):
    with open(path_or_dict) as f:
      document = yaml.safe_load(f)
  return json_format.ParseDict(document, pb.PipelineSpec())


def load_job(path_or_dict) -> pb.PipelineJob:
  """pipeline_job.json (or its dict) as a PipelineJob; an unknown field is an error."""
  document = path_or_dict
  if isinstance(path_or_dict, str):
    with open(path_or_dict) as f:
      document = json.load(f)
  return json_format.ParseDict(document, pb.PipelineJob())


def localize(document, rewrites: Dict[str, str]):
  """(a copy of `document` with every occurrence of each key of `rewrites` inside its string
  values replaced by the value, {key: occurrences}). Longer keys go first, so that a URI and
  one under it may both be given. The compiled files need gs:// URIs; executing them here needs
  local folders: this is the one change made to a compiled file before it runs."""
  order = sorted(rewrites, key=len, reverse=True)
  counts = {key: 0 for key in rewrites}

  def walk(value):
    if isinstance(value, dict):
      return {walk(k): walk(v) for k, v in value.items()}
    if isinstance(value, list):
      return [walk(v) for v in value]
    if isinstance(value, str):
      for key in order:
        counts[key] += value.count(key)
        value = value.replace(key, rewrites[key])
      return value
    return value

  return walk(document), counts


def image_env(dockerfile=DOCKERFILE) -> Dict[str, str]:
  """The `ENV NAME=VALUE` lines of the Dockerfile: the environment every step has in the image."""
  env = {}
  with open(dockerfile) as f:
    for line in f:
      match = re.match(r"^ENV\s+(\w+)=(\S*)\s*$", line)
      if match:
        env[match.group(1)] = match.group(2)
  return env


# ----------------------------------------------------------------------------- values

def _schema_title(type_schema: pb.ArtifactTypeSchema) -> str:
  if type_schema.WhichOneof("kind") == "schema_title":
    return type_schema.schema_title
  if type_schema.WhichOneof("kind") == "instance_schema":
    return (yaml.safe_load(type_schema.instance_schema) or {}).get("title", "")
  raise HarnessError(f"artifact type {type_schema} has neither a schema title nor an instance "
                     "schema")


def _struct_value(value) -> struct_pb2.Value:
  """A Python value, a legacy `Value` or a google.protobuf.Value as a google.protobuf.Value."""
  if isinstance(value, struct_pb2.Value):
    return value
  if isinstance(value, pb.Value):
    kind = value.WhichOneof("value")
    if kind is None:
      raise HarnessError("an empty constant Value")
    return _struct_value(getattr(value, kind))
  result = struct_pb2.Value()
  if isinstance(value, bool):
    result.bool_value = value
  elif isinstance(value, (int, float)):
    result.number_value = value
  elif isinstance(value, str):
    result.string_value = value
  else:
    json_format.ParseDict(value, result)
  return result


def _legacy_value(value: struct_pb2.Value, primitive_type=None) -> pb.Value:
  """A google.protobuf.Value as the deprecated `Value` (int, double or string) of schema 2.0.0.
  `primitive_type`: PrimitiveType's INT, DOUBLE or STRING; unknown: integral numbers are INT."""
  kind = value.WhichOneof("kind")
  types = pb.PrimitiveType.PrimitiveTypeEnum
  if kind == "string_value":
    if primitive_type in (types.INT, types.DOUBLE):
      raise HarnessError(f"string {value.string_value!r} for a number parameter")
    return pb.Value(string_value=value.string_value)
  if kind == "number_value":
    number = value.number_value
    if primitive_type == types.STRING:
      return pb.Value(string_value=json.dumps(number))
    if primitive_type == types.INT or (primitive_type is None and number == int(number)):
      if number != int(number):
        raise HarnessError(f"{number} for an INT parameter")
      return pb.Value(int_value=int(number))
    return pb.Value(double_value=number)
  if kind == "bool_value":
    return pb.Value(int_value=int(value.bool_value))
  # Lists and structs: JSON text, as KFP passes them to a STRING input.
  return pb.Value(string_value=json_format.MessageToJson(value, indent=None))


def _text(value) -> str:
  """How a placeholder prints a parameter: strings as they are, anything else as JSON."""
  value = _struct_value(value)
  if value.WhichOneof("kind") == "string_value":
    return value.string_value
  plain = json_format.MessageToDict(value)
  if isinstance(plain, float) and plain == int(plain):
    plain = int(plain)
  return json.dumps(plain)


# ----------------------------------------------------------------------------- placeholders

PLACEHOLDER = re.compile(r"\{\{(\$[^{}]*)\}\}")
_ARTIFACT_FIELD = re.compile(
    r"^\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.(uri|name|"
    r"metadata\['([^']+)'\]|properties\['([^']+)'\])$")


def substitute(text: str, executor_input: pb.ExecutorInput, job: dict) -> str:
  """`text` with the ExecutorInput contract's placeholders replaced; an unknown one is an error.
  `job`: pipeline_job_name, pipeline_job_uuid, pipeline_task_name, pipeline_task_uuid, ..."""

  def value_of(match):
    expression = match.group(1)
    if expression == "$":
      return json_format.MessageToJson(executor_input, indent=None, sort_keys=True)
    found = re.fullmatch(r"\$\.inputs\.parameters\['([^']+)'\]", expression)
    if found:
      name = found.group(1)
      if name in executor_input.inputs.parameter_values:
        return _text(executor_input.inputs.parameter_values[name])
      if name in executor_input.inputs.parameters:
        return _text(executor_input.inputs.parameters[name])
      raise HarnessError(f"placeholder {match.group(0)}: no input parameter {name!r}")
    found = re.fullmatch(r"\$\.outputs\.parameters\['([^']+)'\]\.output_file", expression)
    if found:
      return executor_input.outputs.parameters[found.group(1)].output_file
    if expression == "$.outputs.output_file":
      return executor_input.outputs.output_file
    found = _ARTIFACT_FIELD.fullmatch(expression)
    if found:
      side, key, field, metadata_key, property_key = found.groups()
      lists = getattr(executor_input, side).artifacts
      if key not in lists or not lists[key].artifacts:
        raise _MissingArtifact(f"placeholder {match.group(0)}: no {side[:-1]} artifact {key!r}")
      runtime = lists[key].artifacts[0]
      if field in ("uri", "name"):
        return getattr(runtime, field)
      metadata = json_format.MessageToDict(runtime.metadata)
      wanted = metadata_key or property_key
      if wanted not in metadata:
        raise _MissingArtifact(f"placeholder {match.group(0)}: the artifact has no {wanted!r}")
      return _text(metadata[wanted])
    name = expression[2:]
    if name in job:
      return str(job[name])
    raise HarnessError(f"placeholder {match.group(0)} is not one the harness knows")

  return PLACEHOLDER.sub(value_of, text)


class _MissingArtifact(HarnessError):
  """A placeholder names an input artifact the task did not get (an empty resolver output)."""


# ----------------------------------------------------------------------------- store

_TERM = re.compile(r"""
    \s*(?:
      in_context\(\s*"(?P<context>(?:[^"\\]|\\.)*)"\s*\)
    | (?P<field>[A-Za-z_][\w.]*)\s*(?P<op>!=|<=|>=|=|<|>)\s*
      (?P<value>"(?:[^"\\]|\\.)*"|[^\s"]+)
    )\s*""", re.X)


def parse_filter(text: str):
  """[(field, op, value)] of an ArtifactQuerySpec filter: terms joined by AND (field
  `in_context` for in_context("...")). Anything else (OR, NOT, parentheses) is an error."""
  terms, position = [], 0
  while True:
    match = _TERM.match(text, position)
    if not match:
      raise HarnessError(f"filter {text!r}: not understood at {text[position:]!r}")
    if match.group("context") is not None:
      terms.append(("in_context", "=", json.loads(f'"{match.group("context")}"')))
    else:
      raw = match.group("value")
      value = json.loads(raw) if raw.startswith('"') else _bare(raw)
      terms.append((match.group("field"), match.group("op"), value))
    position = match.end()
    if position == len(text):
      return terms
    joiner = re.match(r"AND\b", text[position:])
    if not joiner:
      raise HarnessError(f"filter {text!r}: expected AND at {text[position:]!r}")
    position += joiner.end()


def _bare(raw):
  try:
    return float(raw)
  except ValueError:
    return raw  # an enum such as LIVE


class ArtifactStore:
  """What the harness remembers across runs (a JSON file): every artifact a succeeded task
  produced, with its pipeline (the context a resolver's query is scoped to) and run."""

  def __init__(self, path):
    self.path = path
    if os.path.exists(path):
      with open(path) as f:
        self._data = json.load(f)
    else:
      self._data = {"next_id": 1, "artifacts": []}

  @property
  def artifacts(self) -> List[dict]:
    return list(self._data["artifacts"])

  def new_name(self) -> str:
    artifact_id = self._data["next_id"]
    self._data["next_id"] += 1
    self._save()
    return ARTIFACT_NAME.format(id=artifact_id)

  def record(self, runtime: pb.RuntimeArtifact, pipeline, run_id, task):
    self._data["artifacts"].append({
        "id": int(runtime.name.rsplit("/", 1)[-1]), "name": runtime.name,
        "schema_title": _schema_title(runtime.type),
        "type": json_format.MessageToDict(runtime.type), "uri": runtime.uri,
        "metadata": json_format.MessageToDict(runtime.metadata), "state": "LIVE",
        "pipeline": pipeline, "run_id": run_id, "task": task, "create_time": time.time()})
    self._save()

  def query(self, filter_text: str, pipeline: str, limit: int = 0) -> List[dict]:
    """The artifacts matching the filter, newest first, at most `limit` (0: 1, as KFP)."""
    terms = parse_filter(filter_text)
    if not any(field == "in_context" for field, _, _ in terms):
      terms.append(("in_context", "=", pipeline))
    found = [a for a in self._data["artifacts"] if all(_holds(a, *t) for t in terms)]
    found.sort(key=lambda a: a["id"], reverse=True)
    return found[:limit or 1]

  def _save(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    temporary = self.path + ".tmp"
    with open(temporary, "w") as f:
      json.dump(self._data, f, indent=1, sort_keys=True)
    os.replace(temporary, self.path)


def _holds(artifact, field, op, value) -> bool:
  if field == "in_context":
    actual = artifact["pipeline"]
  elif field in ("schema_title", "artifact_type"):
    actual = artifact["schema_title"]
  elif field in ("state", "name", "uri"):
    actual = artifact[field]
  elif field.startswith("metadata."):
    parts = field.split(".")
    if len(parts) != 3 or parts[2] not in ("number_value", "string_value", "bool_value"):
      raise HarnessError(f"filter field {field!r}: expected metadata.<key>.<kind>_value")
    if parts[1] not in artifact["metadata"]:
      return False
    actual = artifact["metadata"][parts[1]]
    kind = {"number_value": (int, float), "string_value": str, "bool_value": bool}[parts[2]]
    if not isinstance(actual, kind) or (parts[2] == "number_value" and isinstance(actual, bool)):
      return False
  else:
    raise HarnessError(f"filter field {field!r} is not one the harness knows")
  if isinstance(value, float) and isinstance(actual, str):
    return False
  if isinstance(value, str) and not isinstance(actual, str):
    value = _bare(value)
  comparisons = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
                 "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
  try:
    return comparisons[op](actual, value)
  except TypeError:
    return False


# ----------------------------------------------------------------------------- results

@dataclasses.dataclass
class TaskResult:
  name: str
  state: str  # SUCCEEDED, FAILED or NOT_RUN (the run had failed before it could start)
  kind: str = ""  # container or resolver
  executor_input: Optional[dict] = None  # what the main command got (after the driver's update)
  driver_output: Optional[dict] = None  # the pre-cache check's ExecutorOutput
  executor_output: Optional[dict] = None
  outputs: Dict[str, List[dict]] = dataclasses.field(default_factory=dict)  # key -> artifacts
  output_parameters: Dict[str, object] = dataclasses.field(default_factory=dict)
  commands: List[List[str]] = dataclasses.field(default_factory=list)  # as run
  error: str = ""  # the exception the executor ended with (its message), or the harness's
  log: str = ""
  seconds: float = 0.0

  def artifact(self, key) -> dict:
    artifacts = self.outputs.get(key) or []
    assert len(artifacts) == 1, f"{self.name}.{key}: {len(artifacts)} artifacts"
    return artifacts[0]


@dataclasses.dataclass
class RunResult:
  run_id: str
  pipeline: str
  pipeline_root: str
  parameters: Dict[str, object]
  tasks: Dict[str, TaskResult]
  order: List[str]

  @property
  def state(self) -> str:
    return "FAILED" if self.failed else "SUCCEEDED"

  @property
  def failed(self) -> Optional[TaskResult]:
    return next((t for t in self.tasks.values() if t.state == "FAILED"), None)

  def states(self) -> Dict[str, str]:
    return {name: task.state for name, task in self.tasks.items()}


# ----------------------------------------------------------------------------- the executor

class LocalKfpExecutor:
  """Runs compiled pipelines' tasks as subprocesses of this venv; see the module docstring."""

  def __init__(self, python=sys.executable, env: Optional[Dict[str, str]] = None,
               task_timeout=900, dockerfile=DOCKERFILE, driver_updates="all"):
    """driver_updates: what of the pre-cache check's ExecutorOutput also updates the main
    command's ExecutorInput. "all" (the proto's Lifecycle contract): its parameters and the
    output artifacts' metadata; "artifacts": the metadata only, so that the driver's parameters
    (span, resolved pattern) reach the executor only through the output metadata file, which
    TFX's entry point reads (the least a pipeline can need: the entry point does not read the
    artifacts' metadata from the file); "none": nothing."""
    if driver_updates not in ("all", "artifacts", "none"):
      raise ValueError(f"driver_updates {driver_updates!r}: all, artifacts or none")
    self.python = python
    self.driver_updates = driver_updates
    self.env = dict(os.environ)
    self.env.update(image_env(dockerfile))
    self.env["PYTHONUNBUFFERED"] = "1"
    self.env.update(env or {})
    self.task_timeout = task_timeout

  # Entry points -------------------------------------------------------------------------

  def run_pipeline_job(self, job, parameters: Optional[dict] = None,
                       run_id: Optional[str] = None) -> RunResult:
    """Vertex AI's way: the PipelineJob's spec, its runtimeConfig's parameter values (those in
    `parameters` replace them, as aiplatform.PipelineJob(parameter_values=...) does) and its
    gcsOutputDirectory as the pipeline root."""
    if not isinstance(job, pb.PipelineJob):
      job = load_job(job)
    config = job.runtime_config
    values = {name: _struct_value(value) for name, value in config.parameters.items()}
    values.update({name: _struct_value(value) for name, value in config.parameter_values.items()})
    values.update({name: _struct_value(value) for name, value in (parameters or {}).items()})
    if not config.gcs_output_directory:
      raise HarnessError("the PipelineJob has no runtimeConfig.gcsOutputDirectory")
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pb.PipelineSpec())
    return self.run_pipeline_spec(spec, config.gcs_output_directory, values, run_id)

  def run_pipeline_spec(self, spec, pipeline_root: str, parameters: Optional[dict] = None,
                        run_id: Optional[str] = None) -> RunResult:
    """KFP's way: a PipelineSpec, the run's parameter values and the pipeline root (what
    kfp.Client.create_run_from_pipeline_package's arguments and pipeline_root give)."""
    if not isinstance(spec, pb.PipelineSpec):
      spec = load_spec(spec)
    if "://" in pipeline_root:
      raise HarnessError(f"pipeline root {pipeline_root}: the harness needs a local folder "
                         "(rewrite the cloud URI with `localize`)")
    pipeline = spec.pipeline_info.name
    run_id = run_id or f"{pipeline}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    legacy = spec.schema_version.startswith("2.0.")
    store = ArtifactStore(os.path.join(pipeline_root, STORE_FILE))
    root_values = self._root_parameters(spec, parameters or {})
    tasks = spec.root.dag.tasks
    order = dependency_order(tasks)
    run = RunResult(run_id=run_id, pipeline=pipeline, pipeline_root=pipeline_root,
                    parameters={k: json_format.MessageToDict(v) for k, v in root_values.items()},
                    tasks={name: TaskResult(name=name, state="NOT_RUN") for name in order},
                    order=order)
    outputs: Dict[str, Dict[str, pb.ArtifactList]] = {}
    output_parameters: Dict[str, Dict[str, struct_pb2.Value]] = {}
    job = {"pipeline_job_name": run_id, "pipeline_job_resource_name": run_id,
           "pipeline_job_uuid": run_id, "pipeline_root": pipeline_root,
           "pipeline_job_create_time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "pipeline_job_schedule_time_utc": ""}
    for name in order:
      task_spec = tasks[name]
      component = spec.components[task_spec.component_ref.name]
      if component.WhichOneof("implementation") != "executor_label":
        raise HarnessError(f"task {name}: nested DAGs are not supported by the harness")
      executor = spec.deployment_spec["executors"][component.executor_label]
      executor_spec = json_format.ParseDict(
          json_format.MessageToDict(executor), pb.PipelineDeploymentConfig.ExecutorSpec())
      result = run.tasks[name]
      started = time.monotonic()
      task_job = dict(job, pipeline_task_name=name, pipeline_task_uuid=uuid.uuid4().hex[:12])
      try:
        _check_supported(name, task_spec)
        inputs = self._inputs(name, task_spec, component, root_values, outputs,
                              output_parameters, legacy)
        kind = executor_spec.WhichOneof("spec")
        result.kind = kind
        if kind == "resolver":
          task_outputs = self._resolve(name, executor_spec.resolver, component, inputs, store,
                                       pipeline, task_job)
          result.state = "SUCCEEDED"
        elif kind == "container":
          task_outputs, parameters_out = self._run_container(
              name, executor_spec.container, component, inputs, store, pipeline_root,
              run_id, task_job, legacy, result)
          output_parameters[name] = parameters_out
          result.output_parameters = {k: json_format.MessageToDict(v)
                                      for k, v in parameters_out.items()}
          if result.state == "SUCCEEDED":
            for artifact_list in task_outputs.values():
              for runtime in artifact_list.artifacts:
                store.record(runtime, pipeline, run_id, name)
        else:
          raise HarnessError(f"task {name}: executor kind {kind!r} is not supported")
      except HarnessError as error:
        result.state, result.error = "FAILED", f"harness: {error}"
        task_outputs = {}
      result.seconds = time.monotonic() - started
      result.outputs = {key: [json_format.MessageToDict(a) for a in artifact_list.artifacts]
                        for key, artifact_list in task_outputs.items()}
      outputs[name] = task_outputs
      if result.state != "SUCCEEDED":
        break  # fail fast: nothing else starts
    return run

  # Parameters and artifacts --------------------------------------------------------------

  @staticmethod
  def _root_parameters(spec, given: dict) -> Dict[str, struct_pb2.Value]:
    definitions = spec.root.input_definitions.parameters
    unknown = set(given) - set(definitions)
    if unknown:
      raise HarnessError(f"unknown pipeline parameters {sorted(unknown)}; the pipeline has "
                         f"{sorted(definitions)}")
    values = {}
    for name, definition in definitions.items():
      if name in given:
        values[name] = _struct_value(given[name])
      elif definition.HasField("default_value"):
        values[name] = definition.default_value
      elif not definition.is_optional:
        raise HarnessError(f"pipeline parameter {name!r} has no value and no default")
    return values

  def _inputs(self, name, task_spec, component, root_values, outputs, output_parameters,
              legacy) -> pb.ExecutorInput.Inputs:
    inputs = pb.ExecutorInput.Inputs()
    definitions = component.input_definitions.parameters
    for key, parameter in task_spec.inputs.parameters.items():
      if parameter.parameter_expression_selector:
        raise HarnessError(f"task {name}: parameter {key}: expression selectors are not "
                           "supported by the harness")
      kind = parameter.WhichOneof("kind")
      if kind == "runtime_value":
        runtime = parameter.runtime_value
        which = runtime.WhichOneof("value")
        if which == "constant_value":
          value = _struct_value(runtime.constant_value)
        elif which == "constant":
          value = runtime.constant
        elif which == "runtime_parameter":
          value = root_values[runtime.runtime_parameter]
        else:
          raise HarnessError(f"task {name}: parameter {key} has no value")
      elif kind == "component_input_parameter":
        if parameter.component_input_parameter not in root_values:
          raise HarnessError(f"task {name}: parameter {key}: the pipeline has no input "
                             f"parameter {parameter.component_input_parameter!r}")
        value = root_values[parameter.component_input_parameter]
      elif kind == "task_output_parameter":
        producer = parameter.task_output_parameter
        produced = output_parameters.get(producer.producer_task, {})
        if producer.output_parameter_key not in produced:
          raise HarnessError(f"task {name}: parameter {key}: {producer.producer_task} did not "
                             f"output {producer.output_parameter_key!r}")
        value = produced[producer.output_parameter_key]
      else:
        raise HarnessError(f"task {name}: parameter {key} of kind {kind} is not supported")
      self._set_parameter(inputs, key, value, definitions.get(key), legacy)
    for key, definition in definitions.items():
      if key not in task_spec.inputs.parameters and definition.HasField("default_value"):
        self._set_parameter(inputs, key, definition.default_value, definition, legacy)
      elif key not in task_spec.inputs.parameters and not definition.is_optional:
        raise HarnessError(f"task {name}: neither value nor default value provided for "
                           f"non-optional parameter {key!r}")
    for key, artifact in task_spec.inputs.artifacts.items():
      if artifact.WhichOneof("kind") != "task_output_artifact":
        raise HarnessError(f"task {name}: input artifact {key} of kind "
                           f"{artifact.WhichOneof('kind')} is not supported")
      producer = artifact.task_output_artifact
      produced = outputs.get(producer.producer_task)
      if produced is None:
        raise HarnessError(f"task {name}: {producer.producer_task} has not run")
      inputs.artifacts[key].CopyFrom(
          produced.get(producer.output_artifact_key, pb.ArtifactList()))
    return inputs

  @staticmethod
  def _set_parameter(inputs, key, value, definition, legacy):
    value = _struct_value(value)
    if legacy:
      primitive = definition.type if definition is not None and definition.type else None
      inputs.parameters[key].CopyFrom(_legacy_value(value, primitive))
    else:
      inputs.parameter_values[key].CopyFrom(value)

  # Resolvers ------------------------------------------------------------------------------

  def _resolve(self, name, resolver, component, inputs, store, pipeline, job):
    if not resolver.output_artifact_queries:
      raise HarnessError(f"task {name}: a resolver without queries")
    executor_input = pb.ExecutorInput(inputs=inputs)
    result = {}
    for key, query in resolver.output_artifact_queries.items():
      if key not in component.output_definitions.artifacts:
        raise HarnessError(f"task {name}: query {key} is not an output of the component")
      try:
        filter_text = substitute(query.filter, executor_input, job)
      except _MissingArtifact:
        # The query refers to an input the upstream resolver did not find: nothing matches.
        result[key] = pb.ArtifactList()
        continue
      found = store.query(filter_text, pipeline, query.limit)
      result[key] = pb.ArtifactList(artifacts=[
          json_format.ParseDict({k: a[k] for k in ("name", "type", "uri", "metadata")},
                                pb.RuntimeArtifact()) for a in found])
    return result

  # Containers -----------------------------------------------------------------------------

  def _run_container(self, name, container, component, inputs, store, pipeline_root, run_id,
                     job, legacy, result):
    task_root = os.path.join(pipeline_root, run_id, f"{name}_{job['pipeline_task_uuid']}")
    executor_input = pb.ExecutorInput(inputs=inputs)
    for key, definition in component.output_definitions.artifacts.items():
      executor_input.outputs.artifacts[key].artifacts.add(
          name=store.new_name(), type=definition.artifact_type,
          uri=os.path.join(task_root, key))
    for key in component.output_definitions.parameters:
      executor_input.outputs.parameters[key].output_file = os.path.join(
          task_root, "parameters", key)
    executor_input.outputs.output_file = os.path.join(task_root, "executor_output.json")
    os.makedirs(task_root, exist_ok=True)
    log_dir = os.path.join(pipeline_root, LOGS_DIR, run_id)
    os.makedirs(log_dir, exist_ok=True)
    result.log = os.path.join(log_dir, f"{name}.log")
    # The working directory: an empty folder, as a container's (nothing on it to import).
    workdir = os.path.join(pipeline_root, WORKDIRS, run_id, name)
    os.makedirs(workdir, exist_ok=True)

    hook = container.lifecycle.pre_cache_check
    if hook.command or hook.args:
      rc, error = self._exec(list(hook.command) + list(hook.args), executor_input, job, result,
                             workdir)
      if rc != 0:
        result.state, result.error = "FAILED", error or f"pre-cache check exited with {rc}"
        return {}, {}
      driver_output = _read_output(executor_input.outputs.output_file)
      if driver_output is None:
        raise HarnessError(f"task {name}: the pre-cache check wrote no output metadata file")
      result.driver_output = json_format.MessageToDict(driver_output)
      self._apply_driver_output(executor_input, driver_output, component, legacy,
                                self.driver_updates)

    result.executor_input = json_format.MessageToDict(executor_input)
    rc, error = self._exec(list(container.command) + list(container.args), executor_input, job,
                           result, workdir)
    if rc != 0:
      result.state, result.error = "FAILED", error or f"exited with {rc}"
      return {}, {}
    output = _read_output(executor_input.outputs.output_file) or pb.ExecutorOutput()
    result.executor_output = json_format.MessageToDict(output)
    artifacts = {}
    for key, planned in executor_input.outputs.artifacts.items():
      merged = pb.ArtifactList()
      reported = output.artifacts[key].artifacts if key in output.artifacts else []
      for index, runtime in enumerate(planned.artifacts):
        artifact = merged.artifacts.add()
        artifact.CopyFrom(runtime)
        if index < len(reported):
          artifact.metadata.CopyFrom(reported[index].metadata)
          if reported[index].uri and reported[index].uri != runtime.uri:
            raise HarnessError(f"task {name}: output {key} reported at {reported[index].uri}, "
                               f"not at its URI {runtime.uri}")
      artifacts[key] = merged
    parameters_out = {}
    for key, parameter in executor_input.outputs.parameters.items():
      if key in output.parameter_values:
        parameters_out[key] = output.parameter_values[key]
      elif key in output.parameters:
        parameters_out[key] = _struct_value(output.parameters[key])
      elif os.path.exists(parameter.output_file):
        with open(parameter.output_file) as f:
          parameters_out[key] = _struct_value(f.read())
      else:
        raise HarnessError(f"task {name}: output parameter {key} was not written")
    result.state = "SUCCEEDED"
    return artifacts, parameters_out

  @staticmethod
  def _apply_driver_output(executor_input, driver_output, component, legacy, what):
    """The pre-cache check's updates reach the main command's ExecutorInput (the proto's
    Lifecycle contract: 'The updated metadata will be passed into the main container')."""
    if what == "none":
      return
    definitions = component.input_definitions.parameters
    updates = {k: v for k, v in driver_output.parameter_values.items()}
    updates.update({k: _struct_value(v) for k, v in driver_output.parameters.items()})
    for key, value in updates.items() if what == "all" else ():
      LocalKfpExecutor._set_parameter(executor_input.inputs, key, value, definitions.get(key),
                                      legacy)
    for key, reported in driver_output.artifacts.items():
      planned = executor_input.outputs.artifacts[key].artifacts
      for runtime, update in zip(planned, reported.artifacts):
        runtime.metadata.CopyFrom(update.metadata)

  def _exec(self, argv, executor_input, job, result, cwd):
    argv = [substitute(arg, executor_input, job) for arg in argv]
    if argv and argv[0] in INTERPRETERS:
      argv[0] = self.python  # the image's `python`: this venv's interpreter
    result.commands.append(argv)
    with open(result.log, "a") as log:
      log.write(f"$ {' '.join(argv[:3])} ...\n")
      log.flush()
      try:
        completed = subprocess.run(argv, cwd=cwd, env=self.env, stdout=log,
                                   stderr=subprocess.PIPE, text=True, timeout=self.task_timeout)
      except subprocess.TimeoutExpired:
        return 124, f"timed out after {self.task_timeout} s"
      log.write(completed.stderr)
    return completed.returncode, exception_message(completed.stderr)


def _read_output(path) -> Optional[pb.ExecutorOutput]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json_format.Parse(f.read(), pb.ExecutorOutput())


def exception_message(stderr: str) -> str:
  """The last Python exception in `stderr`, `Type: message` (every line of its message)."""
  lines = stderr.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
  if not starts:
    return ""
  tail = lines[starts[-1] + 1:]
  for i, line in enumerate(tail):
    if not line.startswith(" ") and re.match(r"^[A-Za-z_][\w.]*(: |$)", line):
      return "\n".join(tail[i:]).strip()
  return ""


def _check_supported(name, task_spec):
  if task_spec.HasField("trigger_policy") and task_spec.trigger_policy.condition:
    raise HarnessError(f"task {name}: trigger conditions are not supported by the harness")
  if task_spec.WhichOneof("iterator"):
    raise HarnessError(f"task {name}: iterators are not supported by the harness")


def dependency_order(tasks) -> List[str]:
  """Task names, each after every task it depends on (its dependentTasks and the producers of
  its inputs); ties by name, so the order is the same every time."""
  needs = {}
  for name, task in tasks.items():
    producers = set(task.dependent_tasks)
    producers |= {a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()
                  if a.WhichOneof("kind") == "task_output_artifact"}
    producers |= {p.task_output_parameter.producer_task for p in task.inputs.parameters.values()
                  if p.WhichOneof("kind") == "task_output_parameter"}
    unknown = producers - set(tasks)
    if unknown:
      raise HarnessError(f"task {name} depends on unknown tasks {sorted(unknown)}")
    needs[name] = producers
  order = []
  while needs:
    ready = sorted(name for name, producers in needs.items() if producers <= set(order))
    if not ready:
      raise HarnessError(f"the DAG has a cycle among {sorted(needs)}")
    order.append(ready[0])
    del needs[ready[0]]
  return order

