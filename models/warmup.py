"""TensorFlow Serving's warm-up requests, shipped in the pushed SavedModel.

TensorFlow Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog` protos) when it loads a model, before the model takes traffic, so the first real
request does not pay for graph optimization and oneDNN's kernel selection. The requests are a few
real eval examples, one batch per signature that takes examples.
"""
import os

import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from vae_pipeline.models import features

WARMUP_FILE = ("assets.extra", "tf_serving_warmup_requests")
# Signatures that take serialized tf.Examples. `evaluate` is left out: 64 decoder passes per
# image are a cost for the Evaluator, not for serving.
WARMUP_SIGNATURES = (features.SERVING_SIGNATURE, features.ENCODE_SIGNATURE,
                     features.SCORE_SIGNATURE)
WARMUP_EXAMPLES = 4


def requests(examples):
  """PredictionLog protos: one request per signature, each with the same `examples`."""
  tensor = tf.make_tensor_proto(list(examples), dtype=tf.string)
  for name in WARMUP_SIGNATURES:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=name))
    request.inputs[features.EXAMPLES_INPUT].CopyFrom(tensor)
    yield prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def write(export_dir, examples):
  """Writes the warm-up file into a SavedModel folder; `examples` are serialized tf.Examples."""
  path = os.path.join(export_dir, *WARMUP_FILE)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for log in requests(examples[:WARMUP_EXAMPLES]):
      writer.write(log.SerializeToString())
  return path


def read(export_dir):
  """The warm-up file's PredictionLog protos (what a test replays against the model)."""
  path = os.path.join(export_dir, *WARMUP_FILE)
  return [prediction_log_pb2.PredictionLog.FromString(record)
          for record in tf.compat.v1.io.tf_record_iterator(path)]
