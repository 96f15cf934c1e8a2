"""PCA fidelity (pcavae.analysis) against closed forms and scipy, and the
fidelity metrics of every eval of a PCA run."""

import json
import os

import jax
import numpy as np
import pytest
from scipy import stats

from pcavae import analysis
from pcavae import configlib
from pcavae import evaluators
from pcavae import train
from pcavae.models import bottlenecks
from pcavae.models.bottlenecks import pca_layer
from pcavae.models import pca
from conftest import ROOT, tiny_config


def _gaussian(eigs, n, seed=0, mean=3.0):
  """Samples whose covariance is exactly `u diag(eigs) u^T` (whitened draws),
  with `u` returned."""
  rng = np.random.default_rng(seed)
  d = len(eigs)
  u, _ = np.linalg.qr(rng.normal(size=(d, d)))
  z = rng.normal(size=(n, d))
  z -= z.mean(0)
  # Whiten so the sample covariance (divided by n) is the identity exactly.
  w = np.linalg.cholesky(z.T @ z / n)
  z = z @ np.linalg.inv(w).T
  return z * np.sqrt(eigs) @ u.T + mean, u


EIGS = np.array([10.0, 6.0, 3.0, 2.5, 1.0, 0.5, 0.2, 0.1])


def test_captured_variance_closed_forms():
  x, u = _gaussian(EIGS, 400)
  q = 3
  # The top-Q eigenvectors (any rotation, any scale of the columns): 1.
  rot = np.linalg.qr(np.random.default_rng(1).normal(size=(q, q)))[0]
  np.testing.assert_allclose(analysis.captured_variance(x, u[:, :q]), 1.0,
                             rtol=1e-10)
  np.testing.assert_allclose(
      analysis.captured_variance(x, u[:, :q] @ rot * [1.0, 2.0, 0.5]), 1.0,
      rtol=1e-10)
  # Eigenvectors 2, 4 and 6: (6 + 2.5 + 0.5) / (10 + 6 + 3).
  np.testing.assert_allclose(
      analysis.captured_variance(x, u[:, [1, 3, 5]]), 9.0 / 19.0, rtol=1e-10)
  # Any basis: tr(P S) / sum of the top Q eigenvalues, P from numpy's QR.
  c = np.random.default_rng(2).normal(size=(8, q))
  p = np.linalg.qr(c)[0]
  s = np.cov(x.T, bias=True)
  np.testing.assert_allclose(analysis.captured_variance(x, c),
                             np.trace(p.T @ s @ p) / 19.0, rtol=1e-10)


def test_captured_variance_per_problem():
  x0, u0 = _gaussian(EIGS, 300, seed=3)
  x1, u1 = _gaussian(EIGS, 300, seed=4)
  x = np.stack([x0, x1])
  basis = np.stack([u0[:, :2], u1[:, [0, 2]]])
  got = analysis.captured_variance(x, basis)
  np.testing.assert_allclose(got, [1.0, 13.0 / 16.0], rtol=1e-10)
  with pytest.raises(ValueError, match='do not match'):
    analysis.captured_variance(x, basis[:, :7])


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(5)
  a = rng.integers(0, 4, size=(6, 9)).astype(float)   # many ties
  b = rng.normal(size=(6, 9))
  got = analysis.spearman_rho(a, b)
  for i in range(6):
    np.testing.assert_allclose(got[i], stats.spearmanr(a[i], b[i])[0],
                               rtol=1e-12)
  v = np.array([[5.0, 4.0, 3.0, 1.0], [1.0, 2.0, 3.0, 4.0],
                [2.0, 2.0, 2.0, 2.0]])
  rho = analysis.order_spearman(v)
  np.testing.assert_allclose(rho[:2], [-1.0, 1.0])
  assert np.isnan(rho[2])
  np.testing.assert_allclose(analysis.order_spearman([3.0, 1.0, 2.0, 0.5]),
                             stats.spearmanr(np.arange(4),
                                             [3.0, 1.0, 2.0, 0.5])[0])


def test_identifiable_components_and_alignment():
  lam = np.array([10.0, 6.0, 3.0, 2.9, 1.0, 0.5, 0.2, 0.1])
  # Gaps relative to each eigenvalue: 3 and 4 (3.0 vs 2.9) are a pair.
  np.testing.assert_array_equal(
      analysis.identifiable_components(lam, 5, min_gap=0.1),
      [True, True, False, False, True])
  # Q = D: the last has no lower neighbour.
  np.testing.assert_array_equal(
      analysis.identifiable_components(np.array([4.0, 2.0]), 2), [True, True])
  x, u = _gaussian(lam, 500, seed=6)
  align, count = analysis.eigenvector_alignment(x, u[:, :5] * -2.0)
  np.testing.assert_allclose(align, 1.0, rtol=1e-10)
  assert count == 3
  # A swap within the near-degenerate pair does not count; a swap of 1 and 2
  # does: cos = 0 for both of them, 1 for component 5.
  align, _ = analysis.eigenvector_alignment(x, u[:, [0, 1, 3, 2, 4]])
  np.testing.assert_allclose(align, 1.0, rtol=1e-10)
  align, _ = analysis.eigenvector_alignment(x, u[:, [1, 0, 2, 3, 4]])
  np.testing.assert_allclose(align, 1.0 / 3.0, atol=1e-10)


def test_pca_fidelity_summary():
  x0, u0 = _gaussian(EIGS, 300, seed=7)
  x1, u1 = _gaussian(EIGS, 300, seed=8)
  x = np.stack([x0, x1])
  basis = np.stack([u0[:, :3], u1[:, [1, 3, 5]]])
  variances = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
  f = analysis.pca_fidelity(x, basis, variances)
  np.testing.assert_allclose(f['captured_variance'], (1 + 9 / 19) / 2)
  np.testing.assert_allclose(f['captured_variance_min'], 9 / 19)
  np.testing.assert_allclose(f['order_spearman'], 0.0)
  # n = 300: identifiable above a relative gap of 4 / sqrt(300) = 0.23,
  # components 1 and 2 (component 3's gap to 2.5 is 0.17).
  np.testing.assert_allclose(f['eigenvector_alignment'], 0.5, atol=1e-10)
  assert f['identifiable_components'] == 2.0
  g = analysis.pca_fidelity(x, basis, variances, min_gap=0.1)
  assert g['identifiable_components'] == 3.0
  np.testing.assert_allclose(g['eigenvector_alignment'], 0.5, atol=1e-10)


# ---------------------------------------------------------------------------
# The layer's trackers, and the metrics in every eval of a run.
# ---------------------------------------------------------------------------


def test_tracker_is_validated_naming_the_key():
  h = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 6))
  layer = bottlenecks.PCABottleneck(num_components=2, tracker='oja')
  with pytest.raises(ValueError, match='config.model.bottleneck.tracker'):
    layer.init(jax.random.PRNGKey(0), h, train=False)
  for key, value, match in (
      ('tracker', 'oja', 'tracker'),
      ('learning_rate', 2.0, 'learning_rate'),
      ('learning_rate', -1.0, 'learning_rate'),
      ('covariance_alpha', 1.5, 'covariance_alpha'),
      ('subspace_iterations', 0, 'subspace_iterations'),
      ('orthonormalization', 'gram', 'orthonormalization')):
    c = tiny_config(**{f'model.bottleneck.{key}': value})
    with pytest.raises(ValueError, match=f'config.model.bottleneck.{match}'):
      configlib.validate(c)
  c = tiny_config(**{'model.bottleneck.tracker': 'subspace',
                     'model.bottleneck.mode': 'global'})
  c.resolution, c.model.channels, c.model.latent_dim = 512, (8,), 64
  with pytest.raises(ValueError, match='tracker=subspace'):
    configlib.validate(c)   # a 262144^2 covariance


def test_reference_flag_is_the_opca_rule():
  c = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py')
                     + ':runlocal,reference')
  b = c.model.bottleneck
  assert (b.tracker, b.learning_rate, b.max_update_norm,
          b.orthonormalize_every, b.orthonormalization) == (
              'reference', None, 0.1, None, 'symmetric')
  d = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') + ':runlocal')
  b = d.model.bottleneck
  assert (b.tracker, b.learning_rate, b.orthonormalize_every,
          b.orthonormalization) == ('sanger', 0.1, 1, 'qr')


@pytest.mark.parametrize('mode', ['spatial', 'shared'])
def test_sanger_and_subspace_layer_steps_by_hand(mode):
  """One training step of each tracker equals the pure functions."""
  h0 = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 3, 6)) * 3.0 + 1.0
  h1 = jax.random.normal(jax.random.PRNGKey(2), (8, 3, 3, 6)) * 3.0 + 1.0

  def samples(h):
    if mode == 'spatial':
      return np.transpose(np.asarray(h).reshape(8, 9, 6), (1, 0, 2))
    return np.asarray(h).reshape(-1, 6)

  for tracker in ('sanger', 'subspace'):
    # The raw step: re-orthonormalised only every Q updates.
    layer = bottlenecks.PCABottleneck(num_components=3, mode=mode,
                                      tracker=tracker, learning_rate=0.3,
                                      max_update_norm=None,
                                      orthonormalize_every=None)
    v = layer.init(jax.random.PRNGKey(0), h0, train=False)
    step = jax.jit(lambda v, h, layer=layer: layer.apply(
        v, h, train=True, mutable=['pca'])[1])
    v1 = step(v, h0)
    v2 = step(v1, h1)
    s, x = v1['pca'], samples(h1)
    mu, _ = pca.fade_mean(s['mean'], s['fade_norm'], x.mean(-2), 0.9)
    xc = x - mu[..., None, :]
    if tracker == 'sanger':
      want = s['basis'] + 0.3 * pca.normalized_sanger_delta(
          s['basis'], xc, s['coef_var'])
    else:
      assert v2['pca']['cov'].shape == s['basis'].shape[:-1] + (6,)
      cov, _ = pca.covariance_update(s['cov'], s['cov_norm'], xc, 0.99)
      np.testing.assert_allclose(v2['pca']['cov'], cov, rtol=1e-5, atol=1e-5)
      want, _ = pca.subspace_iteration(cov, s['basis'])
    np.testing.assert_allclose(v2['pca']['basis'], want, rtol=1e-4,
                               atol=1e-5)
    # The same steps with the latent 10x larger: the same basis.
    w2 = step(step(v, h0 * 10.0), h1 * 10.0)
    np.testing.assert_allclose(w2['pca']['basis'], v2['pca']['basis'],
                               atol=2e-4)
  # The default's re-orthonormalisation after every step (issue 19):
  # Cholesky-QR or symmetric, each the pure function's result.
  for how, ortho in (('qr', pca.orthonormalize_qr),
                     ('symmetric', pca.orthonormalize)):
    layer = bottlenecks.PCABottleneck(
        num_components=3, mode=mode, tracker='sanger', learning_rate=0.3,
        max_update_norm=None, orthonormalize_every=1, orthonormalization=how)
    v = layer.init(jax.random.PRNGKey(0), h0, train=False)
    step = jax.jit(lambda v, h, layer=layer: layer.apply(
        v, h, train=True, mutable=['pca'])[1])
    v1 = step(v, h0)
    s, x = v1['pca'], samples(h1)
    mu, _ = pca.fade_mean(s['mean'], s['fade_norm'], x.mean(-2), 0.9)
    xc = x - mu[..., None, :]
    want = ortho(s['basis'] + 0.3 * pca.normalized_sanger_delta(
        s['basis'], xc, s['coef_var']))
    got = step(v1, h1)['pca']['basis']
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(pca.orthonormality_error(got)) < 1e-5


@pytest.fixture(scope='module')
def subspace_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pca_fidelity'))
  c = tiny_config(**{'model.bottleneck.mode': 'shared',
                     'model.bottleneck.tracker': 'subspace'})
  final = train.train_and_evaluate(c, workdir)
  return workdir, final


def test_fidelity_in_every_eval(subspace_run):
  workdir, final = subspace_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if 'eval/psnr' in r]
  assert [r['step'] for r in evals] == [3, 6]
  keys = ('pca/captured_variance', 'pca/captured_variance_min',
          'pca/order_spearman', 'pca/eigenvector_alignment',
          'pca/identifiable_components', 'eval/seconds_pca_fidelity')
  for r in evals:
    for k in keys:
      assert k in r, k
    assert 0.0 <= r['pca/captured_variance_min'] <= r[
        'pca/captured_variance'] <= 1.0 + 1e-9
  # The subspace tracker is a PCA of its (EMA) covariance; on the eval
  # latents of the same model it captures nearly all of the top-Q variance,
  # in order.
  assert final['pca/captured_variance'] > 0.9
  assert final['pca/order_spearman'] < -0.7
  history = pca_layer.fidelity_history(evaluators.load_saved(workdir))
  np.testing.assert_array_equal(history['step'], [3, 6])
  np.testing.assert_allclose(history['captured_variance'][-1],
                             final['pca/captured_variance'])
  for step in (3, 6):
    assert os.path.exists(os.path.join(
        workdir, 'images', f'pca_fidelity_step_{step:07d}.png'))
