"""The pure PCA math of pcavae.models.pca against closed forms and numpy."""

import functools

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


# ---------------------------------------------------------------------------
# The scale-free Sanger step (tracker `sanger`) and the subspace tracker.
# ---------------------------------------------------------------------------

# A known spectrum: four leading eigenvalues with relative gaps >= 0.25, then
# a decaying tail.
_EIGS = np.array([8.0, 4.0, 2.0, 1.5] + [0.5 * 0.8 ** i for i in range(12)])


def _run_normalized_sanger(rate, scale, steps, d=16, q=4, n=32):
  """Normalised Sanger steps on Gaussian samples of covariance `_EIGS` (in a
  random eigenbasis) times `scale**2`, orthonormalised every Q steps, with
  the running coefficient variance that the layer keeps."""
  u, cov = _covariance_with_eigs(d, _EIGS, seed=7)
  chol = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
  path, var = _normalized_sanger_path(
      jax.random.PRNGKey(1), chol, jnp.float32(rate), jnp.float32(scale),
      steps, q, n)
  return np.asarray(path), np.asarray(var), u


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _normalized_sanger_path(key, chol, rate, scale, steps, q, n):
  d = chol.shape[0]

  def body(carry, k):
    c, var, var_norm, t = carry
    x = scale * jnp.matmul(jax.random.normal(k, (n, d)), chol.T,
                           precision='highest')
    c = c + rate * pca.normalized_sanger_delta(c, x, var)
    t = t + 1
    c = jax.lax.cond(t % q == 0, pca.orthonormalize, lambda c: c, c)
    # The coefficients as the layer's (float32) projection makes them.
    y = pca.project(x, c, jnp.zeros(d))[0]
    var, var_norm = pca.fade_mean(var, var_norm, jnp.mean(y * y, 0), 0.99)
    return (c, var, var_norm, t), c

  init = (pca.random_orthonormal(jax.random.PRNGKey(0), (d, q)),
          jnp.zeros(q), jnp.zeros(()), jnp.zeros((), jnp.int32))
  (_, var, _, _), path = jax.lax.scan(body, init,
                                      jax.random.split(key, steps))
  return path, var


def test_normalized_sanger_trajectory_does_not_depend_on_scale():
  """z_e times 0.1 or 10: the same basis at every step, to rounding."""
  ref, _, _ = _run_normalized_sanger(0.1, 1.0, 2000)
  for scale in (0.1, 10.0):
    path, _, _ = _run_normalized_sanger(0.1, scale, 2000)
    np.testing.assert_allclose(path, ref, atol=2e-4)
  # The raw step does depend on it: its size scales with scale**2.
  c = pca.random_orthonormal(jax.random.PRNGKey(0), (16, 4))
  x = jax.random.normal(jax.random.PRNGKey(2), (32, 16))
  raw = np.linalg.norm(pca.sanger_delta(c, 10.0 * x))
  assert raw > 50 * np.linalg.norm(pca.sanger_delta(c, x))
  np.testing.assert_allclose(pca.normalized_sanger_delta(c, 10.0 * x),
                             pca.normalized_sanger_delta(c, x), rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize('rate', [1e-3, 1e-2, 1e-1, 1.0])
def test_normalized_sanger_stable_and_converges_over_rates(rate):
  """Rates over three decades: never diverges; from 1e-2 up it converges to
  the ordered top eigenvectors of the known covariance (closed form)."""
  path, var, u = _run_normalized_sanger(rate, 1.0, 2000)
  assert np.all(np.isfinite(path))
  c = path[-1]
  assert np.max(np.abs(np.linalg.norm(c, axis=0) - 1.0)) < 0.5
  if rate < 1e-2:
    return  # 2000 steps at 1e-3 are ~2 time constants: finite is the claim
  cos = np.abs(np.sum(c * u[:, :4], 0)) / np.linalg.norm(c, axis=0)
  # Stationary noise grows with the rate (batches of 32 in 16 dimensions).
  assert cos.min() > (0.99 if rate <= 0.1 else 0.9), cos
  span = np.linalg.qr(c)[0]
  captured = np.trace(span.T @ (u * _EIGS) @ u.T @ span) / _EIGS[:4].sum()
  assert captured > (0.995 if rate <= 0.1 else 0.97), captured
  # The running coefficient variances approach the eigenvalues, in order.
  assert np.all(np.diff(var) < 0)
  np.testing.assert_allclose(var, _EIGS[:4], rtol=0.25)


def test_normalized_sanger_zero_samples_give_zero_step():
  c = pca.random_orthonormal(jax.random.PRNGKey(0), (6, 2))
  delta = pca.normalized_sanger_delta(c, jnp.zeros((4, 6)), jnp.zeros(2))
  np.testing.assert_array_equal(delta, np.zeros((6, 2)))


def test_covariance_update_closed_form():
  rng = np.random.default_rng(8)
  alpha = 0.9
  xs = rng.normal(size=(4, 2, 10, 3)).astype(np.float32)   # 4 batches, L=2
  cov, norm = jnp.zeros((2, 3, 3)), jnp.zeros((2,))
  batch_covs = np.einsum('tlnd,tlne->tlde', xs, xs) / 10
  for t in range(4):
    cov, norm = pca.covariance_update(cov, norm, jnp.asarray(xs[t]), alpha)
    w = alpha ** (t - np.arange(t + 1))
    expected = np.tensordot(w, batch_covs[:t + 1], axes=1) / w.sum()
    np.testing.assert_allclose(cov, expected, rtol=1e-5, atol=1e-6)


def test_subspace_iteration_converges_to_ordered_eigenvectors():
  d, q = 16, 4
  u, cov = _covariance_with_eigs(d, _EIGS, seed=9)
  cov = jnp.asarray(np.stack([cov, cov]), jnp.float32)       # 2 problems
  c = pca.random_orthonormal(jax.random.PRNGKey(3), (2, d, q))
  # Rate lambda_5 / lambda_4 = 1/3 per iteration: 60 reach rounding.
  c, ritz = jax.jit(lambda cov, c: pca.subspace_iteration(cov, c, 60))(cov, c)
  c = np.asarray(c)
  for i in range(2):
    np.testing.assert_allclose(c[i].T @ c[i], np.eye(q), atol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(c[i] * u[:, :q], 0)), 1.0,
                               atol=1e-4)
  np.testing.assert_allclose(ritz, np.stack([_EIGS[:q]] * 2), rtol=1e-4)
  # Signs follow the incoming basis: one more iteration flips nothing.
  c2, _ = pca.subspace_iteration(cov, jnp.asarray(c))
  np.testing.assert_allclose(c2, c, atol=1e-4)
  c3, _ = pca.subspace_iteration(cov, -jnp.asarray(c))
  np.testing.assert_allclose(c3, -c, atol=1e-4)


@pytest.mark.parametrize('spread', [0.01, 0.5])
def test_orthonormalize_fixed_iterations_matches_the_adaptive_loop(spread):
  """The fixed Newton-Schulz count (used for a basis split over devices,
  where the adaptive loop's stopping test deadlocked XLA:CPU) gives the
  polar factor as the adaptive loop and the eigendecomposition do."""
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(5, 24, 8)))
  c = jnp.asarray(q + spread * rng.normal(size=q.shape), jnp.float32)
  fixed = pca.orthonormalize(c, fixed_iterations=True)
  adaptive = pca.orthonormalize(c)
  u, _, vt = np.linalg.svd(np.asarray(c, np.float64), full_matrices=False)
  polar = u @ vt
  np.testing.assert_allclose(fixed, polar, atol=2e-5)
  np.testing.assert_allclose(fixed, adaptive, atol=2e-5)
  assert float(pca.orthonormality_error(fixed)) < 1e-5
