"""The likelihood bounds against a model whose log-likelihood is known exactly.

Linear-Gaussian: p(z) = N(0, I), p(x | z) = N(z, s^2 I), so p(x) = N(0, (1 + s^2) I) and the
exact posterior is N(x / (1 + s^2), s^2 / (1 + s^2) I).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from vae_pipeline.models import bounds

NOISE_VAR = 0.5
DIM = 4


def gaussian_model(x):
  def neg_log_likelihood(z):
    return 0.5 * tf.reduce_sum(tf.square(x - z) / NOISE_VAR + math.log(2 * math.pi * NOISE_VAR),
                               axis=-1)
  exact_nll = 0.5 * np.sum(x ** 2 / (1 + NOISE_VAR) + math.log(2 * math.pi * (1 + NOISE_VAR)),
                           axis=-1)
  posterior_mean = x / (1 + NOISE_VAR)
  posterior_log_var = np.full_like(x, math.log(NOISE_VAR / (1 + NOISE_VAR)))
  return neg_log_likelihood, exact_nll, posterior_mean, posterior_log_var


@pytest.fixture(name="points")
def fixture_points():
  return np.random.default_rng(0).normal(size=(200, DIM)).astype(np.float32) * 1.5


def test_exact_posterior_gives_the_exact_likelihood(points):
  nll_fn, exact, mean, log_var = gaussian_model(points)
  neg_elbo, nll_iw = bounds.likelihood_bounds(nll_fn, mean, log_var, samples=64)
  # Every importance weight equals p(x): the bound is exact whatever the draws.
  np.testing.assert_allclose(nll_iw, exact, rtol=1e-5)
  # The ELBO is exact in expectation; 64 draws x 200 points average out the noise.
  assert abs(float(np.mean(neg_elbo - exact))) < 0.05


def test_a_poor_posterior_orders_the_bounds_and_converges(points):
  nll_fn, exact, mean, log_var = gaussian_model(points)
  mean, log_var = mean + 0.7, log_var + 1.0  # q is off in both mean and spread
  gaps = {}
  for samples in (1, 8, 64, 1024):
    neg_elbo, nll_iw = bounds.likelihood_bounds(nll_fn, mean, log_var, samples=samples)
    gaps[samples] = float(np.mean(nll_iw - exact))
    if samples > 1:
      assert float(np.mean(neg_elbo)) > float(np.mean(nll_iw))
  # Upper bounds on -log p(x) that tighten as K grows, towards the exact value.
  assert gaps[1] > gaps[8] > gaps[64] > 0, gaps
  assert abs(gaps[1024]) < 0.05 * gaps[1], gaps
  # K = 1: the importance-weighted bound is the ELBO in expectation (KL sampled, not exact).
  neg_elbo, nll_iw = bounds.likelihood_bounds(nll_fn, mean, log_var, samples=1)
  standard_error = float(np.std(nll_iw - neg_elbo)) / math.sqrt(len(points))
  assert abs(float(np.mean(nll_iw - neg_elbo))) < 4 * standard_error


def test_draws_are_repeatable_and_seeded(points):
  nll_fn, _, mean, log_var = gaussian_model(points)
  first = bounds.likelihood_bounds(nll_fn, mean + 0.7, log_var, samples=16)
  again = bounds.likelihood_bounds(nll_fn, mean + 0.7, log_var, samples=16)
  other = bounds.likelihood_bounds(nll_fn, mean + 0.7, log_var, samples=16, seed=7)
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[1], other[1])


def test_chunking_the_draws_does_not_change_the_result(points):
  nll_fn, _, mean, log_var = gaussian_model(points)
  # One draw per decoder call, a few draws per call, all draws in one call.
  results = [bounds.likelihood_bounds(nll_fn, mean + 0.7, log_var, samples=64, max_batch=size)
             for size in (1, 3 * len(points), 10 ** 6)]
  for neg_elbo, nll_iw in results[1:]:
    np.testing.assert_allclose(neg_elbo, results[0][0], rtol=1e-5)
    np.testing.assert_allclose(nll_iw, results[0][1], rtol=1e-5)
