"""The PCA bottleneck module: state, update order, gradients, shapes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from pcavae import configlib
from pcavae.models import autoencoder
from pcavae.models import bottlenecks
from pcavae.models import pca


def _h(shape=(4, 3, 3, 6), seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape) * 2.0 + 0.5


@pytest.mark.parametrize('mode,basis_shape,coef_shape', [
    ('spatial', (9, 6, 4), (4, 3, 3, 4)),
    ('shared', (6, 4), (4, 3, 3, 4)),
    ('global', (54, 4), (4, 4)),
])
def test_modes_shapes_and_state(mode, basis_shape, coef_shape):
  layer = bottlenecks.PCABottleneck(num_components=4, mode=mode)
  h = _h()
  variables = layer.init(jax.random.PRNGKey(1), h, train=False)
  assert 'pca' in variables and 'params' not in variables
  state = variables['pca']
  assert state['basis'].shape == basis_shape
  assert state['mean'].shape == basis_shape[:-2] + (basis_shape[-2],)
  assert set(state) >= {'basis', 'mean', 'fade_norm', 'count', 'coef_var'}
  assert float(pca.orthonormality_error(state['basis'])) < 1e-5
  (h_hat, aux), new = layer.apply(variables, h, train=True, lr=0.1,
                                  mutable=['pca'])
  assert h_hat.shape == h.shape
  assert aux['coefficients'].shape == coef_shape
  assert int(new['pca']['count']) == 1
  # After the first batch the mean is exactly that batch's mean.
  if mode == 'spatial':
    expected_mean = h.reshape(4, 9, 6).mean(0)
  elif mode == 'shared':
    expected_mean = h.reshape(-1, 6).mean(0)
  else:
    expected_mean = h.reshape(4, -1).mean(0)
  np.testing.assert_allclose(new['pca']['mean'], expected_mean, rtol=1e-5,
                             atol=1e-5)


def test_global_mode_with_mapper_has_params_outside_pca():
  layer = bottlenecks.PCABottleneck(num_components=4, mode='global',
                                    global_dim=8)
  variables = layer.init(jax.random.PRNGKey(1), _h(), train=False)
  assert variables['pca']['basis'].shape == (8, 4)
  assert set(variables['params']) == {'map_in', 'map_out', 'unmap_in',
                                      'unmap_out'}


# The OPCA-VAE rule (`configs/pcavae.py:reference`), not the defaults.
REFERENCE = dict(tracker='reference', learning_rate=None, max_update_norm=0.1,
                 orthonormalize_every=None, orthonormalization='symmetric')


def test_train_update_follows_design_order():
  """Mean fade, Sanger step on centred stop-grad samples, clip, projection
  with the updated basis: checked against the pure functions by hand."""
  layer = bottlenecks.PCABottleneck(num_components=3, mode='spatial',
                                    **dict(REFERENCE, max_update_norm=0.05))
  h0, h1 = _h(seed=2), _h(seed=3)
  v = layer.init(jax.random.PRNGKey(0), h0, train=False)
  (_, _), v1 = layer.apply(v, h0, train=True, lr=0.5, mutable=['pca'])
  (h_hat, aux), v2 = layer.apply(v1, h1, train=True, lr=0.5, mutable=['pca'])

  s = v1['pca']
  x = jnp.transpose(h1.reshape(4, 9, 6), (1, 0, 2))
  mu, norm = pca.fade_mean(s['mean'], s['fade_norm'], x.mean(1), 0.9)
  basis = pca.gha_update(s['basis'], x - mu[:, None], 0.5, max_norm=0.05)
  np.testing.assert_allclose(v2['pca']['mean'], mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(v2['pca']['fade_norm'], norm, rtol=1e-6)
  np.testing.assert_allclose(v2['pca']['basis'], basis, rtol=1e-4, atol=1e-6)
  coef, rec = pca.project(x, basis, mu)
  np.testing.assert_allclose(
      h_hat, jnp.transpose(rec, (1, 0, 2)).reshape(h1.shape), atol=1e-5)
  assert float(aux['pca_update_norm']) > 0


def test_orthonormalize_every_q_updates():
  layer = bottlenecks.PCABottleneck(num_components=2, mode='shared',
                                    **dict(REFERENCE, max_update_norm=None))
  h = _h()
  v = layer.init(jax.random.PRNGKey(0), h, train=False)
  errors = []
  for i in range(4):
    _, v = layer.apply(v, _h(seed=10 + i), train=True, lr=0.3,
                       mutable=['pca'])
    errors.append(float(pca.orthonormality_error(v['pca']['basis'])))
  # Updates 2 and 4 (multiples of Q = 2) end orthonormal; 1 and 3 drift.
  assert errors[0] > 1e-3 and errors[2] > 1e-3
  assert errors[1] < 1e-5 and errors[3] < 1e-5


def test_eval_mode_mutates_nothing():
  layer = bottlenecks.PCABottleneck(num_components=3, mode='spatial')
  h = _h()
  v = layer.init(jax.random.PRNGKey(0), h, train=False)
  _, v = layer.apply(v, h, train=True, lr=0.1, mutable=['pca'])
  out, new = layer.apply(v, _h(seed=5), train=False, mutable=['pca'])
  jax.tree.map(np.testing.assert_array_equal, new['pca'], v['pca'])
  # And without `mutable` it runs (nothing needs to be written).
  layer.apply(v, h, train=False)


def test_encoder_gradient_flows_through_projection_only():
  """d loss / d h equals the gradient through h -> (h - mu) C C^T + mu with
  C, mu constants: the PCA state gets no gradient and does not move it."""
  layer = bottlenecks.PCABottleneck(num_components=3, mode='spatial')
  h0 = _h()
  v = layer.init(jax.random.PRNGKey(0), h0, train=False)
  _, v = layer.apply(v, h0, train=True, lr=0.1, mutable=['pca'])
  target = _h(seed=7)

  def loss_layer(h):
    (h_hat, _), new = layer.apply(v, h, train=True, lr=0.1, mutable=['pca'])
    return jnp.sum((h_hat - target) ** 2), new

  g, new = jax.grad(loss_layer, has_aux=True)(_h(seed=8))
  c, mu = new['pca']['basis'], new['pca']['mean']

  def loss_hand(h):
    x = jnp.transpose(h.reshape(4, 9, 6), (1, 0, 2))
    x_hat = jnp.einsum('lbd,ldq,leq->lbe', x - mu[:, None], c, c) + mu[:, None]
    return jnp.sum((jnp.transpose(x_hat, (1, 0, 2)).reshape(h.shape)
                    - target) ** 2)

  np.testing.assert_allclose(g, jax.grad(loss_hand)(_h(seed=8)), rtol=1e-4,
                             atol=1e-4)
  assert float(jnp.abs(g).max()) > 0


def test_autoencoder_pca_collection_not_in_params_and_identity():
  model = autoencoder.Autoencoder(
      channels=(8, 16), latent_dim=8, num_res_layers=1,
      bottleneck_kind='pca', bottleneck_kwargs={'num_components': 4})
  x = jnp.zeros((2, 16, 16, 3))
  v = model.init(jax.random.PRNGKey(0), x, train=False)
  assert 'pca' in v
  assert not any('basis' in str(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(v['params'])[0])
  (y, aux), _ = model.apply(v, x + 0.3, train=True, lr=1e-3, mutable=['pca'])
  assert y.shape == x.shape and aux['z_e'].shape == (2, 4, 4, 8)
  assert float(jnp.abs(y).max()) <= 1.0

  ident = autoencoder.Autoencoder(channels=(8,), latent_dim=4,
                                  num_res_layers=1, bottleneck_kind='identity')
  vi = ident.init(jax.random.PRNGKey(0), x, train=False)
  assert set(vi) == {'params'}
  (y, aux) = ident.apply(vi, x, train=True)
  np.testing.assert_array_equal(aux['z_q'], aux['z_e'])


def test_registry_rejects_unknown_kind():
  assert bottlenecks.get('pca') is bottlenecks.PCABottleneck
  with pytest.raises(ValueError, match='config.model.bottleneck.kind'):
    bottlenecks.get('nope')


def test_q_larger_than_dim_is_rejected():
  layer = bottlenecks.PCABottleneck(num_components=7, mode='spatial')
  with pytest.raises(ValueError, match='num_components'):
    layer.init(jax.random.PRNGKey(0), _h(), train=False)


@pytest.mark.parametrize('kind,kwargs', [
    ('vq', dict(codebook_size=16)),
    ('ema_vq', dict(codebook_size=16)),
    ('simvq', dict(codebook_size=16)),
    ('vqgan_fc', dict(codebook_size=16)),
    ('fsq', dict(levels=(5, 3))),
    ('lfq', dict(code_dim=8)),
    ('pca', dict(num_components=3, coefficient_bits=4)),
    ('pca', dict(num_components=3, mode='shared', coefficient_bit_budget=60)),
    ('pca', dict(num_components=5, mode='global', global_dim=12,
                 coefficient_bits=4)),
])
def test_latent_from_symbols_is_the_eval_output(kind, kwargs):
  """The codec's decoder half of each bottleneck: from `aux[symbol_key]`
  back to the eval output (up to the straight-through term's ulp)."""
  h = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 8)) * 2
  layer = bottlenecks.get(kind)(**kwargs)
  variables = layer.init({'params': jax.random.PRNGKey(0)}, h, train=False)
  out, aux = layer.apply(variables, h, train=False)
  z = layer.apply(variables, aux[layer.symbol_key], aux.get('symbol_bits'),
                  method=type(layer).latent_from_symbols)
  np.testing.assert_allclose(np.asarray(z).reshape(out.shape), out,
                             atol=1e-6)


def test_class_defaults_are_the_config_defaults():
  """One source: a config's PCA keys are the layer's own defaults."""
  c = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') + ':runlocal')
  layer = configlib.make_bottleneck(c)
  for key in ('tracker', 'learning_rate', 'max_update_norm',
              'orthonormalize_every', 'orthonormalization', 'variance_alpha',
              'coefficient_bits'):
    assert c.model.bottleneck[key] == getattr(
        bottlenecks.PCABottleneck(num_components=1), key), key
    assert getattr(layer, key) == c.model.bottleneck[key]
  assert c.model.bottleneck.tracker == 'sanger'
  assert c.model.bottleneck.orthonormalization == 'qr'
  # A None default stays settable from the command line (typed).
  c.model.bottleneck.global_dim = 8
  ref = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py')
                       + ':runlocal,reference')
  assert {k: ref.model.bottleneck[k] for k in REFERENCE} == dict(
      REFERENCE, max_update_norm=0.1)
