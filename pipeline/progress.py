"""Shows which component runs and how long it took, instead of TFX's INFO log."""
import contextlib
import logging
import re
import sys
import time

from absl import logging as absl_logging

# LocalDagRunner logs "Component X is running.", BeamDagRunner "node X is running.".
_COMPONENT_EVENT = re.compile(r"(?:Component|node) (\S+) is (running|finished)\.")


class ComponentProgress(logging.Handler):
  """Turns the orchestrator's 'Component X is running/finished.' lines into progress lines."""

  def __init__(self, stream=None):
    super().__init__(level=logging.INFO)
    self.stream = stream or sys.stdout
    self.started = {}
    self.run_started = time.monotonic()
    self.running = None  # the component that started last and has not finished

  def emit(self, record):
    match = _COMPONENT_EVENT.fullmatch(record.getMessage())
    if not match:
      return
    component, event = match.groups()
    now = time.monotonic()
    elapsed = now - self.run_started
    if event == "running":
      self.started[component] = now
      self.running = component
      print(f"[{elapsed:6.1f}s] {component} ...", file=self.stream, flush=True)
    else:
      if self.running == component:
        self.running = None
      took = now - self.started.get(component, now)
      print(f"[{elapsed:6.1f}s] {component} done in {took:.1f}s", file=self.stream, flush=True)


# Warnings TFX 1.16 prints on every run that tell the user nothing actionable.
_KNOWN_NOISE = (
    "ArtifactQuery.property_predicate is not supported",
    "ContextQuery.property_predicate is not supported",
    "Examples artifact does not have payload_format",
)


class _WarningsOnly(logging.Filter):
  def filter(self, record):
    return (record.levelno >= logging.WARNING
            and not record.getMessage().startswith(_KNOWN_NOISE))


@contextlib.contextmanager
def component_progress(stream=None):
  """Within the block, absl INFO logs are dropped except the component progress lines. Yields
  the ComponentProgress (its `running`: which component a failure or Ctrl-C stopped)."""
  logger = logging.getLogger("absl")
  saved = (logger.level, logger.propagate, list(logger.handlers), absl_logging.get_verbosity())
  warnings = logging.StreamHandler(sys.stderr)
  warnings.addFilter(_WarningsOnly())
  absl_logging.set_verbosity(absl_logging.INFO)
  shown = ComponentProgress(stream)
  logger.handlers = [shown, warnings]
  logger.propagate = False
  # Beam warns that python-snappy is missing (only checksums are slower, at this size nothing).
  beam_tfrecord = logging.getLogger("apache_beam.io.tfrecordio")
  beam_level = beam_tfrecord.level
  beam_tfrecord.setLevel(logging.ERROR)
  try:
    yield shown
  finally:
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers = saved[2]
    absl_logging.set_verbosity(saved[3])
    beam_tfrecord.setLevel(beam_level)
