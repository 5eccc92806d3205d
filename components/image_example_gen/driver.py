"""ImageExampleGen's driver: TFX's file-based driver, with the span and fingerprint of a local
source taken from `data.sources.scan`.

TFX finds the span and fingerprints the input by globbing and stat-ing every file. Locally that
fails for entries a user's folder can hold: a file name that is not UTF-8 (TensorFlow's glob
decodes names as UTF-8), a symbolic-link loop ("Too many levels of symbolic links") or a
dangling link (NotFoundError). The scan lists them as bad inputs instead, so they meet the same
policy as any other unreadable input (named, or skipped and recorded). It also follows
symbolic links to folders, as the executor's reading does. The fingerprint has TFX's format and
meaning: a changed, added or removed entry changes it, so caching works as before. URIs
(gs://, s3://: no such entries) and patterns this pipeline does not write keep TFX's own code.
"""

from tfx.components.example_gen import driver
from tfx.components.example_gen import input_processor
from tfx.components.example_gen import utils

from vae_pipeline.data import fs
from vae_pipeline.data import sources


class _LocalInputProcessor(input_processor.FileBasedInputProcessor):

  def _ours(self):
    return (not fs.is_uri(self._input_base_uri) and not self._is_match_date
            and not self._is_match_version and not (
                self._range_config and self._range_config.HasField("static_range")))

  def resolve_span_and_version(self):
    if not self._ours():
      return super().resolve_span_and_version()
    span = 0
    if self._is_match_span:
      latest = sources.latest_span(self._input_base_uri)
      if latest is None:
        raise ValueError(f"no span-N folder in {self._input_base_uri}")
      span = int(sources.SPAN_FOLDER.fullmatch(latest).group(1))
    fingerprints = []
    for split in self._splits:
      pattern = split.pattern.replace(utils.SPAN_SPEC, str(span))
      count, size, xor, added = sources.fingerprint(
          sources.pattern_root(self._input_base_uri, pattern))
      # TFX's format (io_utils.generate_fingerprint), one line per split.
      fingerprints.append(f"split:{split.name},num_files:{count},total_bytes:{size},"
                          f"xor_checksum:{xor},sum_checksum:{added}")
    self._fingerprint = "\n".join(fingerprints)
    return span, None


class Driver(driver.FileBasedDriver):

  def get_input_processor(self, splits, range_config=None, input_base_uri=None):
    return _LocalInputProcessor(input_base_uri, splits, range_config)
