"""The SavedModel's signatures: raw tf.Examples in, deterministic outputs (z = mean) out.

The Transform graph is applied inside, so a client needs nothing but TensorFlow. The trained
weights are constants of each signature's graph, not variables (see with_weights_as_constants).
"""
import tensorflow as tf
# TensorFlow's own freezing (its TFLite converter uses it); not in the public `tf` namespace.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from vae_pipeline.models import bounds
from vae_pipeline.models import features
from vae_pipeline.models import vae as vae_lib


class VaeServing:
  """The signatures' functions, traced on the trained model's variables."""

  def __init__(self, model, tft_output, latent_dim):
    self.latent_dim = latent_dim
    self.encoder, self.decoder = model.encoder, model.decoder
    # Kernels derived once from the trained ones (see vae.FastConv2DTranspose), read by the
    # traced graphs like the other weights.
    for layer in model.decoder.layers:
      if isinstance(layer, vae_lib.FastConv2DTranspose):
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
    self.generate = tf.function(
        self._generate, autograph=False,
        input_signature=[tf.TensorSpec([], tf.int32, name=features.COUNT_INPUT),
                         tf.TensorSpec([], tf.int64, name=features.SEED_INPUT)])

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
    """The deterministic loss: low for images like the training data, high for unusual ones."""
    _, _, _, rec, kl = self._deterministic_pass(self._images(examples))
    return {features.SCORE: rec + kl}

  def _generate(self, count, seed):
    """`count` images decoded from z ~ N(0, I); stateless draws, so a seed repeats them."""
    z = tf.random.stateless_normal(tf.stack([count, self.latent_dim]),
                                   seed=tf.stack([seed, tf.constant(0, tf.int64)]))
    return {features.IMAGES: self.decoder(z, training=False)}


def with_weights_as_constants(function):
  """`function` (a tf.function with an input signature) as a concrete function of the same
  inputs and outputs whose graph holds every variable it reads as a constant.

  Why: a signature call passes each variable it captures as one more input, through Python, on
  every call (34 for `serving_default`), and oneDNN reorders a variable's conv kernel into its
  own layout on every call but caches that for a constant one. Measured at batch 1: 0.1-0.3 ms
  less per call (README, "Serving speed"). The weights never change in a pushed model; the
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


def export_serving_model(model, tft_output, latent_dim, export_dir):
  module = VaeServing(model, tft_output, latent_dim)
  signatures = {
      features.SERVING_SIGNATURE: module.serve,
      features.DECODE_SIGNATURE: module.decode,
      features.EVALUATION_SIGNATURE: module.evaluate,
      features.ENCODE_SIGNATURE: module.encode,
      features.SCORE_SIGNATURE: module.score,
      features.GENERATE_SIGNATURE: module.generate,
  }
  signatures = {name: with_weights_as_constants(function) for name, function in signatures.items()}
  # What the Pusher ships: the signatures and nothing else (no variables to restore).
  tf.saved_model.save(tf.Module(), export_dir, signatures=signatures)
