"""The SavedModel's signatures: raw tf.Examples in, deterministic outputs (z = mean) out.

The Transform graph is applied inside, so a client needs nothing but TensorFlow. The trained
weights are constants of each signature's graph, not variables (see with_weights_as_constants),
and large batches run as concurrent chunks (see in_parallel_chunks).
"""
import json
import os

import tensorflow as tf
# TensorFlow's own freezing (its TFLite converter uses it); not in the public `tf` namespace.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from vae_pipeline.models import anomaly
from vae_pipeline.models import bounds
from vae_pipeline.models import fast_layers
from vae_pipeline.models import features
from vae_pipeline.models import vae as vae_lib
from vae_pipeline.models import warmup


class VaeServing:
  """The signatures' functions, traced on the trained model's variables."""

  def __init__(self, model, tft_output, latent_dim):
    self.calibration = None  # the anomaly score's constants (calibrate), before tracing `score`
    self.latent_dim = latent_dim
    self.encoder, self.decoder = model.encoder, model.decoder
    # Kernels derived once from the trained ones (see fast_layers.FastConv2DTranspose), read by the
    # traced graphs like the other weights.
    for layer in model.decoder.layers:
      if isinstance(layer, fast_layers.FastConv2DTranspose):
        layer.freeze_for_serving()
    self.tft_layer = tft_output.transform_features_layer()
    raw_spec = tft_output.raw_feature_spec()
    # Only the image is read: examples with or without a label are both accepted.
    self._raw_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
    # autograph=False: nothing here branches on tensors, and converting tf_keras' source
    # while tracing costs seconds (see VAE.train_step).
    self.serve = tf.function(
        self._serve, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    self.evaluate = tf.function(
        self._evaluate, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    self.decode = tf.function(
        self._decode, autograph=False,
        input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name=features.LATENT_INPUT)])
    self.encode = tf.function(
        self._encode, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    self.score = tf.function(
        self._score, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])

  def _images(self, examples):
    raw = tf.io.parse_example(examples, self._raw_spec)
    return self.tft_layer(raw)[features.TRANSFORMED_IMAGE_KEY]

  def _deterministic_pass(self, images):
    """Encode, decode z = mean: (mean, log_var, reconstruction, reconstruction loss, KL)."""
    mean, log_var = self.encoder(images, training=False)
    reconstruction = self.decoder(mean, training=False)
    rec = vae_lib.reconstruction_loss(images, reconstruction)
    return mean, log_var, reconstruction, rec, vae_lib.kl_loss(mean, log_var)

  def _serve(self, examples):
    mean, log_var, reconstruction, rec, kl = self._deterministic_pass(self._images(examples))
    return {
        features.RECONSTRUCTION: reconstruction,
        features.Z_MEAN: mean,
        features.Z_LOG_VAR: log_var,
        features.RECONSTRUCTION_LOSS: rec,
        features.KL_LOSS: kl,
        features.LOSS: rec + kl,
    }

  def _evaluate(self, examples):
    """The deterministic losses plus Monte-Carlo likelihood bounds (models/bounds.py)."""
    images = self._images(examples)
    mean, log_var, _, rec, kl = self._deterministic_pass(images)
    neg_elbo, nll_iw = bounds.image_bounds(self.decoder, images, mean, log_var)
    return {features.RECONSTRUCTION_LOSS: rec, features.KL_LOSS: kl, features.LOSS: rec + kl,
            features.NEG_ELBO: neg_elbo, features.NLL_IW: nll_iw}

  def _decode(self, z):
    return {features.IMAGES: self.decoder(z, training=False)}

  def _encode(self, examples):
    mean, log_var = self.encoder(self._images(examples), training=False)
    return {features.Z_MEAN: mean, features.Z_LOG_VAR: log_var}

  def _score(self, examples):
    """The anomaly score (models/anomaly.py), its percentile and flag, and the raw loss."""
    images = self._images(examples)
    mean, _, _, rec, kl = self._deterministic_pass(images)
    if self.calibration is None:  # not calibrated: the loss itself, as before the score
      return {features.SCORE: rec + kl}
    return anomaly.score_outputs(images, mean, rec + kl, self.calibration)

  def calibrate(self, train_images, eval_images, anomaly_quantile):
    """Fits the anomaly score on the transformed train and eval splits (batches of images)."""
    @tf.function(autograph=False, reduce_retracing=True)
    def encode_and_losses(images):
      mean, _, _, rec, kl = self._deterministic_pass(images)
      return mean, rec + kl

    self.calibration = anomaly.calibrate(encode_and_losses, train_images, eval_images,
                                         anomaly_quantile)
    return self.calibration

  def generate_with(self, decode):
    """The `generate` signature: `count` images decoded by `decode` (the decode signature) from
    z ~ N(0, I); stateless draws, so a seed repeats them."""
    def generate(count, seed):
      z = tf.random.stateless_normal(tf.stack([count, self.latent_dim]),
                                     seed=tf.stack([seed, tf.constant(0, tf.int64)]))
      return decode(**{features.LATENT_INPUT: z})

    return tf.function(generate, autograph=False, input_signature=[
        tf.TensorSpec([], tf.int32, name=features.COUNT_INPUT),
        tf.TensorSpec([], tf.int64, name=features.SEED_INPUT)]).get_concrete_function()


# Batches above this many inputs run as chunks of it, several at once (see in_parallel_chunks).
CHUNK_SIZE = 64
# Chunks in flight at once: TensorFlow runs them on its inter-op threads, one per core by default.
PARALLEL_CHUNKS = 16


def in_parallel_chunks(signature, batch_input):
  """`signature` (a concrete function of keyword inputs) as one of the same inputs and outputs
  that cuts a batch of `batch_input` above CHUNK_SIZE into chunks, runs them concurrently and
  concatenates their outputs (all batch-major). A smaller batch is one direct call.

  Why: each oneDNN op splits its work over the intra-op threads, which scales poorly on few
  cores, and at batch 1 the hand-off costs more than the work. Chunks keep the cores busy with
  independent ops instead. With one intra-op thread (TensorFlow Serving's
  --tensorflow_intra_op_parallelism=1), batch 1 skips the hand-off while large batches still use
  every core (docs/serving.md, benchmarks/serve_speed.py).
  """
  specs = tf.nest.flatten(signature.structured_input_signature)

  def call(**inputs):
    batch = tf.shape(inputs[batch_input])[0]

    def chunked():
      count = (batch + CHUNK_SIZE - 1) // CHUNK_SIZE
      arrays = tf.nest.map_structure(
          lambda output: tf.TensorArray(output.dtype, size=count, infer_shape=False,
                                        element_shape=output.shape),
          signature.structured_outputs)

      def body(i, arrays):
        chunk = inputs[batch_input][i * CHUNK_SIZE:tf.minimum((i + 1) * CHUNK_SIZE, batch)]
        outputs = signature(**dict(inputs, **{batch_input: chunk}))
        return i + 1, tf.nest.map_structure(lambda array, output: array.write(i, output),
                                            arrays, outputs)

      _, arrays = tf.while_loop(lambda i, _: i < count, body, [tf.constant(0), arrays],
                                parallel_iterations=PARALLEL_CHUNKS)
      return tf.nest.map_structure(lambda array: array.concat(), arrays)

    return tf.cond(batch <= CHUNK_SIZE, lambda: signature(**inputs), chunked)

  return tf.function(call, autograph=False).get_concrete_function(
      **{spec.name: spec for spec in specs})


def with_weights_as_constants(function):
  """`function` (a tf.function with an input signature) as a concrete function of the same
  inputs and outputs whose graph holds every variable it reads as a constant.

  Why: a signature call passes each variable it captures as one more input, through Python, on
  every call (34 for `serving_default`), and oneDNN reorders a variable's conv kernel into its
  own layout on every call but caches that for a constant one, so a batch-1 call is cheaper
  (benchmarks/serve_speed.py). The weights never change in a pushed model; the
  Trainer's checkpoint keeps them as variables for warm starts.
  """
  concrete = function.get_concrete_function()
  frozen = convert_variables_to_constants_v2(concrete)  # flat inputs, flat outputs
  specs = tf.nest.flatten(concrete.structured_input_signature)

  def call(**inputs):
    outputs = frozen(*[inputs[spec.name] for spec in specs])
    return tf.nest.pack_sequence_as(concrete.structured_outputs, outputs)

  return tf.function(call, autograph=False).get_concrete_function(
      **{spec.name: spec for spec in specs})


def export_serving_model(model, tft_output, latent_dim, export_dir, calibration_data=None,
                         warmup_examples=()):
  """The SavedModel of every signature. `calibration_data`: (train images, eval images,
  anomaly quantile) to calibrate the anomaly score, kept in assets.extra/ as JSON too;
  `warmup_examples`: serialized raw tf.Examples for TensorFlow Serving's warm-up file."""
  module = VaeServing(model, tft_output, latent_dim)
  if calibration_data:
    module.calibrate(*calibration_data)
  examples_in = {
      features.SERVING_SIGNATURE: module.serve,
      features.ENCODE_SIGNATURE: module.encode,
      features.SCORE_SIGNATURE: module.score,
  }
  signatures = {name: in_parallel_chunks(with_weights_as_constants(function),
                                         features.EXAMPLES_INPUT)
                for name, function in examples_in.items()}
  # Not in chunks: each of its calls decodes up to bounds.MAX_DECODES images (~0.5 GB), and
  # chunks in flight at once would each hold that much.
  signatures[features.EVALUATION_SIGNATURE] = with_weights_as_constants(module.evaluate)
  signatures[features.DECODE_SIGNATURE] = in_parallel_chunks(
      with_weights_as_constants(module.decode), features.LATENT_INPUT)
  signatures[features.GENERATE_SIGNATURE] = module.generate_with(
      signatures[features.DECODE_SIGNATURE])
  # What the Pusher ships: the signatures and nothing else (no variables to restore).
  tf.saved_model.save(tf.Module(), export_dir, signatures=signatures)
  if module.calibration is not None:
    path = os.path.join(export_dir, *anomaly.CALIBRATION_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
      json.dump(module.calibration.to_dict(), f)
  if len(warmup_examples):
    warmup.write(export_dir, list(warmup_examples))
  return module.calibration
