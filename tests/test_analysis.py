"""pcavae.analysis against numpy/scipy and closed forms."""

import jax
import numpy as np
import pytest
from scipy import linalg as sp_linalg
from scipy import optimize
from scipy import stats

from pcavae import analysis


def _samples_with_variances(variances, n, seed=0):
  """`(n, d)` Gaussian samples whose covariance has these eigenvalues."""
  rng = np.random.default_rng(seed)
  d = len(variances)
  u, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return (rng.normal(size=(n, d)) * np.sqrt(variances)) @ u.T + 3.0


@pytest.mark.parametrize('n,d', [(500, 12), (7, 12), (40, 12)])
def test_singular_values_match_scipy_on_centred_data(n, d):
  z = _samples_with_variances(np.linspace(4.0, 0.1, d), n)
  expected = sp_linalg.svdvals(z - z.mean(0))
  got = analysis.singular_values(z)
  assert got.shape == (min(n, d),)
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
  # Centred inside: a shift does not change the spectrum.
  np.testing.assert_allclose(analysis.singular_values(z + 100.0), got,
                             rtol=1e-8, atol=1e-8)


def test_isotropic_spectrum_closed_forms():
  s = np.full(10, 3.0)
  assert analysis.effective_rank(s) == pytest.approx(10.0)
  assert analysis.participation_ratio(s) == pytest.approx(10.0)
  assert analysis.explained_variance_dim(s, 0.99) == 10
  assert analysis.explained_variance_dim(s, 0.5) == 5
  assert analysis.explained_variance_dim(s, 0.51) == 6


def test_rank_k_data():
  rng = np.random.default_rng(1)
  k, d, n = 4, 16, 2000
  z = rng.normal(size=(n, k)) @ rng.normal(size=(k, d))
  s = analysis.singular_values(z)
  assert np.all(s[k:] < 1e-6 * s[0])
  assert analysis.explained_variance_dim(s, 0.99) <= k
  assert analysis.explained_variance_dim(s, 0.999999) == k
  assert analysis.effective_rank(s) <= k + 1e-6
  assert analysis.participation_ratio(s) <= k + 1e-6
  # Rank 1: every measure is 1.
  s1 = np.array([5.0, 0.0, 0.0])
  assert analysis.effective_rank(s1) == pytest.approx(1.0)
  assert analysis.participation_ratio(s1) == pytest.approx(1.0)
  assert analysis.explained_variance_dim(s1) == 1


def test_power_law_spectrum_against_direct_formulas():
  d, decay = 64, 1.3
  lam = np.arange(1, d + 1, dtype=np.float64) ** -decay   # variances
  s = np.sqrt(lam)[::-1]                                   # any order
  p = s / s.sum()
  assert analysis.effective_rank(s) == pytest.approx(
      np.exp(stats.entropy(p)), rel=1e-12)
  assert analysis.participation_ratio(s) == pytest.approx(
      lam.sum() ** 2 / np.sum(lam ** 2), rel=1e-12)
  share = np.cumsum(lam) / lam.sum()
  for t in (0.5, 0.9, 0.99):
    k = analysis.explained_variance_dim(s, t)
    assert share[k - 1] >= t and (k == 1 or share[k - 2] < t)


def test_zero_spectrum():
  assert analysis.effective_rank(np.zeros(3)) == 0.0
  assert analysis.participation_ratio(np.zeros(3)) == 0.0
  assert analysis.explained_variance_dim(np.zeros(3)) == 0
  with pytest.raises(ValueError):
    analysis.explained_variance_dim(np.ones(3), 1.5)


def _rate(lam, theta):
  return np.sum(np.maximum(0.0, 0.5 * np.log2(lam / theta)))


def test_waterfilling_isotropic_closed_form():
  d, var, r = 8, 2.0, 12.0
  theta, rates = analysis.reverse_waterfilling(np.full(d, var), r)
  assert theta == pytest.approx(var * 2 ** (-2 * r / d))
  np.testing.assert_allclose(rates, r / d)
  assert analysis.waterfilling_dim(np.full(d, var), r) == d


@pytest.mark.parametrize('r', [0.3, 1.0, 5.0, 10.0, 40.0])
def test_waterfilling_power_law_solves_the_equation(r):
  lam = np.arange(1, 33, dtype=np.float64) ** -1.5
  rng = np.random.default_rng(0)
  lam_shuffled = rng.permutation(lam)
  theta, rates = analysis.reverse_waterfilling(lam_shuffled, r)
  # Rates sum to R, follow the formula, and theta is scipy's root.
  assert rates.sum() == pytest.approx(r, rel=1e-10)
  np.testing.assert_allclose(
      rates, np.maximum(0, 0.5 * np.log2(lam_shuffled / theta)), atol=1e-12)
  root = optimize.brentq(lambda t: _rate(lam, t) - r, 1e-300, lam.max(),
                         xtol=1e-300, rtol=1e-14)
  assert theta == pytest.approx(root, rel=1e-9)
  assert analysis.waterfilling_dim(lam_shuffled, r) == int(np.sum(lam > theta))


def test_waterfilling_edge_cases():
  lam = np.array([4.0, 1.0, 0.0, 0.0])   # rank 2
  theta, rates = analysis.reverse_waterfilling(lam, 20.0)
  assert rates[2:].tolist() == [0.0, 0.0] and rates.sum() == pytest.approx(20)
  # Below 0.5 log2(4 / 1) = 1 bit only the top component is active.
  assert analysis.waterfilling_dim(lam, 0.9) == 1
  assert analysis.waterfilling_dim(lam, 1.1) == 2
  theta, rates = analysis.reverse_waterfilling(lam, 0.0)
  assert theta == 4.0 and not rates.any()
  with pytest.raises(ValueError):
    analysis.reverse_waterfilling(np.array([-1.0]), 1.0)


def _mixture(seed=0, k=8, d=5, n_per=300, sep=20.0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)) * sep
  labels = np.repeat(np.arange(k), n_per)
  x = centres[labels] + rng.normal(size=(k * n_per, d))
  perm = rng.permutation(len(x))
  return x[perm].astype(np.float32), centres, labels[perm]


def test_kmeans_recovers_mixture_centres_and_codes_are_cluster_means():
  x, true_centres, labels = _mixture()
  centres, assignments = analysis.kmeans(jax.random.PRNGKey(0), x, k=8,
                                         num_iters=10)
  centres, assignments = np.asarray(centres), np.asarray(assignments)
  # Each true centre has exactly one code near it (within 3 sigma / sqrt(n)).
  dist = np.linalg.norm(true_centres[:, None] - centres[None], axis=-1)
  assert sorted(dist.argmin(1).tolist()) == list(range(8))
  assert dist.min(1).max() < 3 * np.sqrt(5) / np.sqrt(300)
  # The assignment recovers the mixture labels (up to renaming).
  for j in range(8):
    assert len(set(assignments[labels == j].tolist())) == 1
  # Every code is the mean of the points assigned to it.
  for c in range(8):
    np.testing.assert_allclose(centres[c], x[assignments == c].mean(0),
                               atol=1e-4)


def test_kmeans_plusplus_picks_samples_and_is_deterministic():
  x, _, _ = _mixture(seed=1, k=4, n_per=50)
  key = jax.random.PRNGKey(3)
  seeds = np.asarray(analysis.kmeans_plusplus(key, x, 6))
  assert all(np.any(np.all(x == s, axis=1)) for s in seeds)
  again = np.asarray(analysis.kmeans_plusplus(key, x, 6))
  np.testing.assert_array_equal(seeds, again)
  # Every one of the 4 far-apart clusters gets a seed.
  c1, a1 = analysis.kmeans(key, x, k=4, num_iters=5)
  c2, a2 = analysis.kmeans(key, x, k=4, num_iters=5)
  np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))
  assert len(set(np.asarray(a1).tolist())) == 4


def test_kmeans_with_fewer_distinct_points_than_codes():
  x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)   # 3 distinct points
  centres, assignments = analysis.kmeans(jax.random.PRNGKey(0), x, k=6,
                                         num_iters=3)
  centres = np.asarray(centres)
  assert np.all(np.isfinite(centres))
  np.testing.assert_allclose(centres[np.asarray(assignments)], x, atol=1e-6)
