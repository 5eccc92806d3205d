"""The export's batch chunking, on a small function whose outputs are known."""
import numpy as np
import pytest
import tensorflow as tf

from vae_pipeline.models import export


def per_row_function():
  """A signature-like concrete function: keyword inputs, a dict of batch-major outputs; `offset`
  is a second, unbatched input that every chunk must see whole."""
  def call(rows, offset):
    return {"shifted": rows + offset, "total": tf.reduce_sum(rows, axis=1),
            "order": tf.cast(tf.range(tf.shape(rows)[0]), tf.float32)}
  return tf.function(call, autograph=False).get_concrete_function(
      rows=tf.TensorSpec([None, 3], tf.float32, name="rows"),
      offset=tf.TensorSpec([], tf.float32, name="offset"))


@pytest.mark.parametrize("batch", [0, 1, export.CHUNK_SIZE, export.CHUNK_SIZE + 1,
                                   3 * export.CHUNK_SIZE + 7])
def test_chunked_calls_equal_one_call_in_order(batch):
  function = per_row_function()
  chunked = export.in_parallel_chunks(function, "rows")
  rows = tf.constant(np.arange(batch * 3, dtype=np.float32).reshape(batch, 3))
  offset = tf.constant(0.5)
  got, want = chunked(rows=rows, offset=offset), function(rows=rows, offset=offset)
  assert set(got) == set(want)
  np.testing.assert_array_equal(got["shifted"], want["shifted"])
  np.testing.assert_array_equal(got["total"], want["total"])
  # Each chunk numbers its own rows from 0: above CHUNK_SIZE the batch ran as chunks, in order.
  expected_order = np.arange(batch) % export.CHUNK_SIZE
  np.testing.assert_array_equal(got["order"], expected_order)
  # Same input names and output shapes as the function it wraps (a signature's contract).
  def input_specs(concrete):
    return {spec.name: spec for spec in tf.nest.flatten(concrete.structured_input_signature)}
  assert input_specs(chunked) == input_specs(function)
  assert {k: v.shape.as_list() for k, v in chunked.structured_outputs.items()} == {
      k: v.shape.as_list() for k, v in function.structured_outputs.items()}
