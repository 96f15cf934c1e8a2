"""The pure PCA math of pcavae.models.pca against closed forms and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcavae.models import pca


def _covariance_with_eigs(d, eigs, seed=0):
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return u, (u * eigs) @ u.T


def test_gha_converges_to_ordered_top_eigenvectors():
  d, q = 8, 3
  eigs = np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1])
  u, cov = _covariance_with_eigs(d, eigs)
  chol = np.linalg.cholesky(cov)
  key = jax.random.PRNGKey(0)
  basis = pca.random_orthonormal(key, (d, q))

  @jax.jit
  def run(basis, key):
    def body(c, inp):
      k, t = inp
      x = jax.random.normal(k, (256, d)) @ chol.T
      # A decaying step, as stochastic approximation needs for convergence.
      return pca.gha_update(c, x, 0.02 * 0.999 ** t), None
    steps = 4000
    basis, _ = jax.lax.scan(body, basis, (jax.random.split(key, steps),
                                          jnp.arange(steps, dtype=jnp.float32)))
    return basis
  basis = np.asarray(run(basis, jax.random.PRNGKey(1)))

  top = u[:, :q]
  # Principal angles between the learned and the true subspace (of an
  # orthonormal basis of the learned span: GHA is orthonormal only to O(lr)).
  cosines = np.linalg.svd(top.T @ np.linalg.qr(basis)[0], compute_uv=False)
  assert np.degrees(np.arccos(np.clip(cosines.min(), -1, 1))) < 1.0
  # Column j is eigenvector j up to sign (Sanger orders them).
  for j in range(q):
    assert abs(abs(basis[:, j] @ top[:, j]) - 1.0) < 2e-3, j
  np.testing.assert_allclose(basis.T @ basis, np.eye(q), atol=5e-3)


def test_sanger_delta_matches_loop_formula():
  rng = np.random.default_rng(1)
  n, d, q = 5, 6, 4
  c = rng.normal(size=(d, q))
  xc = rng.normal(size=(n, d))
  expected = np.zeros((d, q))
  for x in xc:
    y = c.T @ x
    for j in range(q):
      residual = x - sum(c[:, k] * y[k] for k in range(j + 1))
      expected[:, j] += y[j] * residual
  expected /= n
  got = pca.sanger_delta(jnp.asarray(c, jnp.float32), jnp.asarray(xc,
                                                                  jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_batched_problems_match_one_by_one():
  rng = np.random.default_rng(2)
  c = rng.normal(size=(3, 5, 2)).astype(np.float32)
  x = rng.normal(size=(3, 7, 5)).astype(np.float32)
  batched = pca.gha_update(c, x, 0.1, max_norm=0.5)
  for i in range(3):
    np.testing.assert_allclose(batched[i],
                               pca.gha_update(c[i], x[i], 0.1, max_norm=0.5),
                               rtol=1e-5, atol=1e-6)


def test_clip_update_per_problem():
  delta = jnp.stack([jnp.full((4, 2), 0.01), jnp.full((4, 2), 10.0)])
  clipped = pca.clip_update(delta, 0.1)
  norms = jnp.sqrt(jnp.sum(clipped ** 2, axis=(1, 2)))
  np.testing.assert_allclose(clipped[0], delta[0])  # under the limit
  np.testing.assert_allclose(norms[1], 0.1, rtol=1e-5)
  assert pca.clip_update(delta, None) is delta


def test_orthonormalize_gives_identity_gram_and_is_closest():
  rng = np.random.default_rng(3)
  c = rng.normal(size=(4, 10, 6)).astype(np.float32)
  o = np.asarray(pca.orthonormalize(jnp.asarray(c)))
  for i in range(4):
    np.testing.assert_allclose(o[i].T @ o[i], np.eye(6), atol=1e-5)
    # Symmetric orthonormalisation = polar factor U V^T of the SVD.
    u, _, vt = np.linalg.svd(c[i], full_matrices=False)
    np.testing.assert_allclose(o[i], u @ vt, atol=1e-4)
  assert float(pca.orthonormality_error(jnp.asarray(o))) < 1e-5
  assert float(pca.orthonormality_error(jnp.asarray(c))) > 0.1


def test_fade_mean_closed_form():
  alpha = 0.9
  rng = np.random.default_rng(4)
  ms = rng.normal(size=(6, 3)).astype(np.float32)
  mean, norm = jnp.zeros(3), jnp.zeros(())
  for n, m in enumerate(ms, start=1):
    mean, norm = pca.fade_mean(mean, norm, jnp.asarray(m), alpha)
    weights = alpha ** (n - 1 - np.arange(n))    # alpha^(n-k), k = 1..n
    expected = (weights[:, None] * ms[:n]).sum(0) / weights.sum()
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm, sum(alpha ** j for j in range(n)),
                               rtol=1e-6)
  # After the first batch the mean is that batch's mean exactly.
  first, _ = pca.fade_mean(jnp.zeros(3), jnp.zeros(()), jnp.asarray(ms[0]),
                           alpha)
  np.testing.assert_allclose(first, ms[0], rtol=1e-6)


def test_project_and_exact_pca():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(500, 6)) @ np.diag([3, 2, 1, 0.5, 0.2, 0.1])
  x = x.astype(np.float32) + 4.0
  mean, basis, var = pca.exact_pca(jnp.asarray(x), 6)
  np.testing.assert_allclose(var, np.sort(np.linalg.eigvalsh(
      np.cov(x.T, bias=True)))[::-1], rtol=1e-3)
  y, x_hat = pca.project(jnp.asarray(x), basis, mean)
  np.testing.assert_allclose(x_hat, x, atol=1e-3)   # full basis: identity
  _, x2 = pca.project(jnp.asarray(x), basis[:, :2], mean)
  # Rank-2 reconstruction error equals the discarded variance.
  err = np.mean(np.sum((np.asarray(x2) - x) ** 2, -1))
  np.testing.assert_allclose(err, float(var[2:].sum()), rtol=1e-3)
  assert y.shape == (500, 6)


@pytest.mark.parametrize('shape', [(5, 3), (4, 6, 2)])
def test_random_orthonormal(shape):
  c = pca.random_orthonormal(jax.random.PRNGKey(0), shape)
  assert c.shape == shape
  assert float(pca.orthonormality_error(c)) < 1e-5
