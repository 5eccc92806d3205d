"""Monte-Carlo bounds on a VAE's negative log-likelihood, in nats per image.

With K draws z_k ~ q(z | x) = N(mean, exp(log_var)) and the prior p(z) = N(0, I):

- `neg_elbo`: the negative evidence lower bound, mean_k[-log p(x | z_k)] + KL(q(z | x) || p(z)),
  the expectation over z estimated with K draws and the KL exact. Training minimizes it (K = 1).
- `nll_iw`: the importance-weighted bound of Burda et al. (2016),
  -log((1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x)). In expectation it lies between -log p(x)
  and the negative ELBO, and tends to -log p(x) as K grows.

Both bound -log p(x) from above in expectation. For images, -log p(x | z) is the model's
reconstruction loss: binary cross-entropy summed over pixels, i.e. a Bernoulli likelihood of
grey-level pixels. That is not a normalized density of continuous pixels, so the numbers compare
models trained with this likelihood, not published results on binarized or continuous MNIST.

Draws are stateless and seeded: the same model and batch of images give the same numbers (an
image's draws depend on its position in the batch, so a different batching changes them).
"""
import math

import tensorflow as tf

from vae_pipeline.models import vae as vae_lib

# Draws of z per image for the evaluation signature (the issue asks K >= 64 for `nll_iw`).
EVAL_SAMPLES = 64
EVAL_SEED = 20161  # any fixed number: evaluations of one model must be repeatable
# Decoder passes per call: 2,048 28x28 images are ~0.5 GB of activations.
MAX_DECODES = 2048

_LOG_2PI = math.log(2.0 * math.pi)


def _log_normal(z, mean, log_var):
  """log N(z; mean, exp(log_var)) summed over the last axis."""
  return -0.5 * tf.reduce_sum(_LOG_2PI + log_var + tf.square(z - mean) / tf.exp(log_var), axis=-1)


def likelihood_bounds(neg_log_likelihood, mean, log_var, samples=EVAL_SAMPLES, seed=EVAL_SEED,
                      max_batch=MAX_DECODES):
  """Returns (neg_elbo, nll_iw), each of shape [N].

  neg_log_likelihood: a function z [C, N, D] -> -log p(x | z) [C, N] for the N images being
  scored and C draws of z for each. Draws go to it in chunks of about `max_batch` rows, so a
  small batch costs one call and memory stays bounded for a large one.
  """
  mean = tf.convert_to_tensor(mean, tf.float32)
  log_var = tf.convert_to_tensor(log_var, tf.float32)
  count = tf.shape(mean)[0]
  epsilon = tf.random.stateless_normal(tf.concat([[samples], tf.shape(mean)], 0),
                                       seed=tf.constant([seed, 0]))
  z = mean + tf.exp(0.5 * log_var) * epsilon  # [K, N, D]
  log_prior_over_q = (_log_normal(z, tf.zeros_like(z), tf.zeros_like(z))
                      - _log_normal(z, mean, log_var))  # [K, N]
  chunk = tf.clip_by_value(max_batch // tf.maximum(count, 1), 1, samples)

  def draw(start, nll_sum, log_sum_weights):
    nll = neg_log_likelihood(z[start:start + chunk])  # [C, N]
    log_weights = -nll + log_prior_over_q[start:start + chunk]
    log_sum_weights = tf.reduce_logsumexp(
        tf.stack([log_sum_weights, tf.reduce_logsumexp(log_weights, axis=0)]), axis=0)
    return start + chunk, nll_sum + tf.reduce_sum(nll, axis=0), log_sum_weights

  _, nll_sum, log_sum_weights = tf.while_loop(
      lambda start, *_: start < samples, draw,
      (tf.constant(0), tf.zeros([count]), tf.fill([count], -float("inf"))))
  neg_elbo = nll_sum / samples + vae_lib.kl_loss(mean, log_var)
  nll_iw = -(log_sum_weights - math.log(samples))
  return neg_elbo, nll_iw


def image_bounds(decoder, images, mean, log_var, samples=EVAL_SAMPLES, seed=EVAL_SEED):
  """(neg_elbo, nll_iw) of `images` [N, H, W, C] under `decoder`, given q's mean and log_var.

  -log p(x | z) is the model's reconstruction loss. Call it inside a tf.function: Keras then
  computes the cross-entropy from the decoder's logits rather than clipped probabilities.
  """

  def neg_log_likelihood(z):  # z [C, N, D] -> [C, N]
    draws, count = tf.shape(z)[0], tf.shape(z)[1]
    reconstruction = decoder(tf.reshape(z, [draws * count, -1]), training=False)
    repeated = tf.reshape(tf.tile(images[tf.newaxis], [draws, 1, 1, 1, 1]),
                          tf.shape(reconstruction))
    return tf.reshape(vae_lib.reconstruction_loss(repeated, reconstruction), [draws, count])

  return likelihood_bounds(neg_log_likelihood, mean, log_var, samples, seed)
