"""AE warm-up (pcavae/warmup.py) and the spectra at eval."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from pcavae import configlib
from pcavae import evaluators
from pcavae import train
from pcavae import warmup
from pcavae import writers
from pcavae.models import pca as pca_lib


def _mixture(k=6, d=4, n_per=200, sep=15.0, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)) * sep
  labels = rng.permutation(np.repeat(np.arange(k), n_per))
  x = centres[labels] + rng.normal(size=(k * n_per, d))
  return x.astype(np.float32), centres


def _switch(kind, state, latents, **bottleneck):
  config = tiny_config('vqvae')
  config.model.bottleneck = dict(kind=kind, **bottleneck)
  config = warmup_config(config, steps=1, iters=15)
  fn = jax.jit(warmup.make_switch_fn(config))
  return fn(state, latents, jax.random.PRNGKey(0))


def warmup_config(config, steps, batches=2, iters=20):
  b = config.model.bottleneck
  b.warmup_steps, b.warmup_kmeans_batches = steps, batches
  b.warmup_kmeans_iters = iters
  return config


def _nhwc(x, batches=2):
  """`(n, d)` -> a tuple of NHWC batches (1x1 latents)."""
  return tuple(jnp.asarray(c[:, None, None, :]) for c in np.split(x, batches))


def _check_codes_at_cluster_means(codebook, x, true_centres):
  codebook = np.asarray(codebook)
  d2 = ((x[:, None] - codebook[None]) ** 2).sum(-1)
  assign = d2.argmin(1)
  used = np.unique(assign)
  # Every code with points sits at their mean ...
  for c in used:
    np.testing.assert_allclose(codebook[c], x[assign == c].mean(0), atol=1e-3)
  # ... and every true centre has a code near it.
  dist = np.linalg.norm(true_centres[:, None] - codebook[None], axis=-1)
  assert dist.min(1).max() < 0.5


def test_switch_initialises_vq_codebook_at_cluster_means():
  x, centres = _mixture()
  state = {'params': {'bottleneck': {'codebook': jnp.zeros((6, 4))}},
           'warmup': {'active': jnp.zeros((), jnp.int32)}}
  new, stats = _switch('vq', state, _nhwc(x), codebook_size=6)
  assert int(new['warmup']['active']) == 1
  _check_codes_at_cluster_means(new['params']['bottleneck']['codebook'], x,
                                centres)
  assert float(stats['warmup/kmeans_used_codes']) == 6
  assert float(stats['warmup/kmeans_samples']) == len(x)


def test_switch_ema_vq_continues_from_kmeans_codebook():
  x, centres = _mixture()
  k = 6
  state = {'params': {}, 'warmup': {'active': jnp.zeros((), jnp.int32)},
           'vq_ema': {'bottleneck': {'embedding': jnp.zeros((k, 4)),
                                     'embedding_sum': jnp.zeros((k, 4)),
                                     'cluster_size': jnp.ones((k,))}}}
  new, _ = _switch('ema_vq', state, _nhwc(x), codebook_size=k)
  ema = new['vq_ema']['bottleneck']
  _check_codes_at_cluster_means(ema['embedding'], x, centres)
  # 1200 points, 2 batches, 6 equal clusters: 100 hits per code per batch.
  np.testing.assert_allclose(ema['cluster_size'], 100.0)
  np.testing.assert_allclose(
      ema['embedding_sum'] / ema['cluster_size'][:, None], ema['embedding'],
      rtol=1e-6)


def test_switch_simvq_matches_kmeans_moments():
  x, _ = _mixture(k=8)
  frozen = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
  state = {'params': {'bottleneck': {'codebook_map': {
      'kernel': jnp.eye(4), 'bias': jnp.zeros(4)}}},
           'simvq': {'bottleneck': {'frozen_codebook': frozen}},
           'warmup': {'active': jnp.zeros((), jnp.int32)}}
  new, _ = _switch('simvq', state, _nhwc(x), codebook_size=8)
  m = new['params']['bottleneck']['codebook_map']
  mapped = np.asarray(frozen @ m['kernel'] + m['bias'])
  from pcavae import analysis  # the centres the map was fitted to
  centres, _ = analysis.kmeans(jax.random.PRNGKey(0), x, k=8, num_iters=15)
  centres = np.asarray(centres)
  np.testing.assert_allclose(mapped.mean(0), centres.mean(0), atol=1e-3)
  np.testing.assert_allclose(np.cov(mapped.T, bias=True),
                             np.cov(centres.T, bias=True), rtol=1e-3,
                             atol=1e-2)


def _numpy_pca(x: np.ndarray, q: int):
  """Mean, top-q eigenvectors (largest-magnitude entry positive) and
  eigenvalues of the biased covariance of `(n, D)` samples, in float64."""
  x = x.astype(np.float64)
  mean = x.mean(0)
  lam, vec = np.linalg.eigh(np.cov(x.T, bias=True))
  lam, vec = lam[::-1][:q], vec[:, ::-1][:, :q]
  vec = vec * np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(q)])
  return mean, vec, lam


@pytest.mark.parametrize('mode', ['spatial', 'shared'])
def test_switch_pca_takes_exact_pca(mode):
  rng = np.random.default_rng(0)
  # Every location has its own mean and its own principal axes, so a
  # location mix-up (a reshape without the transpose, H and W swapped)
  # gives another basis.
  loc_mean = rng.normal(size=(2, 2, 6)) * 3.0
  loc_scale = rng.uniform(0.3, 3.0, size=(2, 2, 6))
  z = rng.normal(size=(40, 2, 2, 6)) * loc_scale + loc_mean
  q, shape = 3, ((4,) if mode == 'spatial' else ())
  state = {'params': {}, 'warmup': {'active': jnp.zeros((), jnp.int32)},
           'pca': {'bottleneck': {
               'basis': jnp.zeros(shape + (6, q)),
               'mean': jnp.zeros(shape + (6,)),
               'coef_var': jnp.zeros(shape + (q,)),
               'fade_norm': jnp.full(shape, 7.0)}}}
  latents = tuple(jnp.asarray(c, jnp.float32) for c in np.split(z, 2))
  new, stats = _switch('pca', state, latents, num_components=q, mode=mode)
  p = new['pca']['bottleneck']
  # The expectation in float64 numpy, location l = i * W + j (row-major).
  if mode == 'spatial':
    samples = [z[:, i, j, :] for i in range(2) for j in range(2)]
  else:
    samples = [z.reshape(-1, 6)]
  expected = [_numpy_pca(s, q) for s in samples]
  mean, basis, var = (np.stack([e[k] for e in expected]) for k in range(3))
  if mode == 'shared':
    mean, basis, var = mean[0], basis[0], var[0]
  np.testing.assert_allclose(p['basis'], basis, atol=1e-4)
  np.testing.assert_allclose(p['mean'], mean, atol=1e-5)
  np.testing.assert_allclose(p['coef_var'], var, rtol=1e-4)
  np.testing.assert_array_equal(p['fade_norm'], 7.0)   # untouched
  assert 0.5 < float(stats['warmup/pca_explained_variance']) <= 1.0


@pytest.mark.parametrize('key,value,kind,match', [
    ('warmup_steps', -1, 'vq', 'warmup_steps'),
    ('warmup_steps', 5, 'kl', 'warmup_steps'),
    ('warmup_kmeans_batches', 0, 'vq', 'warmup_kmeans_batches'),
])
def test_warmup_config_errors_name_the_key(key, value, kind, match):
  config = tiny_config({'vq': 'vqvae', 'kl': 'kl'}[kind])
  config = warmup_config(config, steps=5)
  config.model.bottleneck[key] = value
  with pytest.raises(ValueError, match=match):
    configlib.validate(config)


def test_pca_global_mapper_rejects_warmup():
  config = warmup_config(tiny_config(arg='setting=global,runlocal'), steps=3)
  with pytest.raises(ValueError, match='global_dim'):
    configlib.validate(config)


def _final_state(workdir):
  _, _, variables, step = train.restore_model(workdir)
  return jax.device_get(variables), step


def test_switch_at_step_n_and_resume_before_it_matches(tmp_path):
  def config(steps):
    c = tiny_config('vqvae', num_train_steps=steps, log_every_steps=1,
                    eval_every_steps=100, checkpoint_every_steps=3,
                    **{'eval.lpips': False, 'model.bottleneck.codebook_size': 16})
    return warmup_config(c, steps=4, batches=2, iters=5)

  full = str(tmp_path / 'full')
  final = train.train_and_evaluate(config(6), full)
  records = [r for r in writers.read_metrics(full) if 'loss' in r]
  active = {r['step']: r['bottleneck/quantizer_active'] for r in records}
  # Measurements of step s come from update s - 1: identity for updates
  # 0..3, the quantizer from update 4 (= warmup_steps) on.
  assert active == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1}
  assert all(r['bottleneck_loss'] == 0 for r in records if r['step'] <= 4)
  assert all(r['bottleneck_loss'] > 0 for r in records if r['step'] > 4)
  switch = [r for r in records if 'warmup/switch_step' in r]
  assert len(switch) == 1 and switch[0]['step'] == 5
  assert switch[0]['warmup/switch_step'] == 4
  assert final['warmup/active'] == 1
  # The spectra of the final eval: scalars, raw spectra and the plot.
  for name in ('z_e', 'z_q', 'codebook', 'codebook_used'):
    assert 1 <= final[f'spectra/{name}/dim99'] <= 8
    assert final[f'spectra/{name}/erank'] > 0
  assert final['eval/seconds_spectra'] > 0
  (step, spectra), = evaluators.load_spectra(full)
  assert step == 6 and spectra['codebook'].shape == (8,)
  assert os.path.exists(os.path.join(full, 'images',
                                     'spectra_step_0000006.png'))

  # A run interrupted after its step-3 checkpoint (before the switch): its
  # workdir holds what the full run's held then. (Not a shorter run: the
  # cosine schedule depends on num_train_steps.)
  resumed = str(tmp_path / 'resumed')
  os.makedirs(os.path.join(resumed, 'checkpoints'))
  shutil.copytree(os.path.join(full, 'checkpoints', '3'),
                  os.path.join(resumed, 'checkpoints', '3'))
  shutil.copy(os.path.join(full, 'config.json'), resumed)
  train.train_and_evaluate(config(6), resumed)
  records_r = [r for r in writers.read_metrics(resumed) if 'loss' in r]
  assert [r['step'] for r in records_r] == [4, 5, 6]
  switch_r = [r for r in records_r if 'warmup/switch_step' in r]
  assert len(switch_r) == 1 and switch_r[0]['step'] == 5
  for k, v in switch[0].items():
    if k.startswith('warmup/') and k != 'warmup/switch_seconds':
      assert switch_r[0][k] == pytest.approx(v, rel=1e-6), k
  a, step_a = _final_state(full)
  b, step_b = _final_state(resumed)
  assert step_a == step_b == 6
  # Bit-identical, as any resumed run (tests/test_reliability.py).
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_pca_warmup_run_and_pca_spectra(tmp_path):
  workdir = str(tmp_path / 'pca')
  c = tiny_config(num_train_steps=4, eval_every_steps=2, log_every_steps=2,
                  **{'eval.lpips': False})
  final = train.train_and_evaluate(warmup_config(c, steps=2), workdir)
  assert final['warmup/active'] == 1
  assert 1 <= final['spectra/pca_coef/dim99'] <= 4
  history = evaluators.load_spectra(workdir)
  assert [s for s, _ in history] == [2, 4]
  assert history[-1][1]['pca_coef'].shape == (4,)
  with np.load(os.path.join(workdir, 'spectra', 'step_0000004.npz')) as f:
    assert float(f['pca_orthonormality_error']) < 1e-2
