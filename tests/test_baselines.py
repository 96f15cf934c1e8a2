"""Baseline bottlenecks, codebook statistics and the VQGAN objective.

Loss formulas are checked against hand computations on tiny arrays; every
kind runs once through `train.train_and_evaluate` on a tiny config.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import flax
import optax
import pytest

from conftest import ROOT, tiny_config
from pcavae import configlib
from pcavae import losses
from pcavae import train
from pcavae import vqgan
from pcavae import writers
from pcavae.metrics import codebook
from pcavae.models import autoencoder
from pcavae.models import bottlenecks
from pcavae.models import discriminator

FAMILIES = ('vqvae', 'ema_vq', 'simvq', 'vqgan_fc', 'fsq', 'lfq', 'kl', 'ae')


@pytest.fixture(autouse=True, scope='module')
def _fast_prng():
  """Runs this module with the `rbg` PRNG.

  XLA:CPU takes ~13 s to compile the threefry hashing of a model init (1 s
  with `rbg`), which would dominate every smoke run below; what these tests
  check does not depend on the PRNG (test_train.py covers the default).
  """
  old = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'rbg')
  yield
  jax.config.update('jax_default_prng_impl', old)


def _h(shape=(2, 3, 3, 4), seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _init(layer, h):
  return layer.init({'params': jax.random.PRNGKey(1),
                     'sample': jax.random.PRNGKey(2)}, h, train=False)


def _apply(layer, variables, h, train=True):
  mutable = [k for k in variables if k != 'params']
  out = layer.apply(variables, h, train=train, mutable=mutable or False,
                    rngs={'sample': jax.random.PRNGKey(3)})
  return out if mutable else (out, {})


# ---------------------------------------------------------------------------
# Straight-through gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('layer', [
    bottlenecks.VQBottleneck(codebook_size=8),
    bottlenecks.EMAVQBottleneck(codebook_size=8),
    bottlenecks.SimVQBottleneck(codebook_size=8),
    bottlenecks.LFQBottleneck(code_dim=4),  # D = d: no projections
], ids=['vq', 'ema_vq', 'simvq', 'lfq'])
def test_straight_through_gradient_is_the_identitys(layer):
  """d <h_hat, g> / dh = g: the quantizer passes gradients unchanged."""
  h = _h()
  v = _init(layer, h)
  g = _h(seed=5)

  def f(x):
    (h_hat, _), _ = _apply(layer, v, x)
    return jnp.sum(h_hat * g)

  grad = jax.grad(f)(h)
  np.testing.assert_allclose(grad, g, rtol=1e-6, atol=1e-6)
  (h_hat, aux), _ = _apply(layer, v, h)
  assert aux['codes'].shape == (2, 3, 3) and aux['codes'].dtype == jnp.int32
  assert not np.allclose(h_hat, h)  # it did quantize


def test_fsq_gradient_is_that_of_the_bound():
  """FSQ rounds straight-through after a tanh bound: the gradient is the
  bound's (scaled by 1 / half-width), as defined."""
  levels = (8, 5, 5, 3)
  layer = bottlenecks.FSQBottleneck(levels=levels)   # D = 4: no projections
  h = _h() * 0.7
  v = _init(layer, h)
  assert 'params' not in v
  g = _h(seed=5)
  grad = jax.grad(lambda x: jnp.sum(_apply(layer, v, x)[0][0] * g))(h)
  half = jnp.asarray([4., 2., 2., 1.])
  expected = jax.grad(lambda x: jnp.sum(
      bottlenecks.fsq_bound(x, levels) / half * g))(h)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(grad).min()) > 0


def test_vqgan_fc_gradient_bypasses_the_lookup():
  """The gradient equals that of proj_out(l2norm(proj_in(h))), the same map
  with the code lookup removed."""
  layer = bottlenecks.FactorizedVQBottleneck(codebook_size=16, lookup_dim=3)
  h = _h()
  v = _init(layer, h)
  p = v['params']
  g = _h(seed=5)

  def no_lookup(x):
    z = x @ p['proj_in']['kernel'] + p['proj_in']['bias']
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return jnp.sum((z @ p['proj_out']['kernel'] + p['proj_out']['bias']) * g)

  grad = jax.grad(lambda x: jnp.sum(_apply(layer, v, x)[0][0] * g))(h)
  np.testing.assert_allclose(grad, jax.grad(no_lookup)(h), rtol=1e-4,
                             atol=1e-6)
  (_, aux), _ = _apply(layer, v, h)
  # Codes and inputs are unit vectors: the losses are at most 4.
  assert 0 <= float(aux['codebook_loss']) <= 4


@pytest.mark.parametrize('kind,kwargs', [
    ('vq', dict(codebook_size=8)), ('ema_vq', dict(codebook_size=8)),
    ('simvq', dict(codebook_size=8)), ('vqgan_fc', dict(codebook_size=8)),
    ('fsq', dict(levels=(5, 3))), ('lfq', dict(code_dim=3)),
    ('kl', dict(latent_channels=2)), ('identity', {}),
])
def test_encoder_gets_a_gradient_through_every_bottleneck(kind, kwargs):
  model = autoencoder.Autoencoder(channels=(4,), latent_dim=4,
                                  num_res_layers=0, bottleneck_kind=kind,
                                  bottleneck_kwargs=kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1)
  v = model.init({'params': jax.random.PRNGKey(1)}, x, train=False)
  cols = [k for k in v if k != 'params']

  def loss(params):
    out = model.apply({**v, 'params': params}, x, train=True,
                      mutable=cols or False,
                      rngs={'sample': jax.random.PRNGKey(2)})
    recon, _ = out[0] if cols else out
    return jnp.mean(jnp.square(recon - x))  # reconstruction only

  grads = jax.grad(loss)(v['params'])
  enc = jax.tree.leaves(grads['encoder'])
  assert all(np.isfinite(g).all() for g in enc)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in enc) > 0


# ---------------------------------------------------------------------------
# Loss formulas by hand.
# ---------------------------------------------------------------------------


def test_vq_loss_with_and_without_legacy_beta():
  z = jnp.asarray([[1.0, 2.0], [0.0, -1.0]])
  e = jnp.asarray([[0.5, 2.0], [1.0, -1.0]])
  sq = (0.25 + 0 + 1 + 0) / 4  # mean squared difference
  loss, cb, commit = losses.vq_loss(z, e, beta=0.25)
  np.testing.assert_allclose([cb, commit], [sq, sq], rtol=1e-6)
  np.testing.assert_allclose(loss, sq + 0.25 * sq, rtol=1e-6)
  legacy, _, _ = losses.vq_loss(z, e, beta=0.25, legacy_beta=True)
  np.testing.assert_allclose(legacy, 0.25 * sq + sq, rtol=1e-6)
  # The gradients tell the two apart: beta on the commitment term (to z),
  # or on the codebook term (to e).
  gz, ge = jax.grad(lambda a, b: losses.vq_loss(a, b, 0.25)[0],
                    argnums=(0, 1))(z, e)
  np.testing.assert_allclose(gz, 0.25 * 2 * (z - e) / 4, rtol=1e-6)
  np.testing.assert_allclose(ge, 2 * (e - z) / 4, rtol=1e-6)
  gz, ge = jax.grad(lambda a, b: losses.vq_loss(a, b, 0.25, True)[0],
                    argnums=(0, 1))(z, e)
  np.testing.assert_allclose(gz, 2 * (z - e) / 4, rtol=1e-6)
  np.testing.assert_allclose(ge, 0.25 * 2 * (e - z) / 4, rtol=1e-6)


def test_vq_bottleneck_picks_nearest_codes_and_trains_the_codebook():
  layer = bottlenecks.VQBottleneck(codebook_size=3, beta=0.25)
  h = jnp.asarray([[[[0.9, 0.1], [-2.0, -2.2]], [[0.1, 0.0], [3.0, 3.0]]]])
  v = _init(layer, h)
  book = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [-2.0, -2.0]])
  v = {'params': {'codebook': book}}
  (h_hat, aux), _ = _apply(layer, v, h)
  np.testing.assert_array_equal(aux['codes'], [[[1, 2], [0, 1]]])
  e = book[jnp.asarray([1, 2, 0, 1])].reshape(h.shape)
  np.testing.assert_allclose(h_hat, e, atol=1e-6)
  sq = float(jnp.mean(jnp.square(h - e)))
  np.testing.assert_allclose(aux['loss'], 1.25 * sq, rtol=1e-5)
  # The codebook gets the gradient of the codebook term only.
  g = jax.grad(lambda p: _apply(layer, {'params': p}, h)[0][1]['loss'])(
      v['params'])['codebook']
  flat_h, codes = h.reshape(-1, 2), [1, 2, 0, 1]
  expected = np.zeros((3, 2))
  for x, c in zip(np.asarray(flat_h), codes):
    expected[c] += 2 * (np.asarray(book[c]) - x) / h.size
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
  assert float(aux['codebook_usage']) == pytest.approx(1.0)


def test_ema_update_with_laplace_smoothing_by_hand():
  k, decay, eps = 3, 0.9, 1e-5
  esum = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
  size = np.array([1.0, 1.0, 1.0])
  x = np.array([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
  codes = np.array([0, 0, 1])
  emb, new_sum, new_size = bottlenecks.ema_codebook_update(
      jnp.asarray(esum), jnp.asarray(size), jnp.asarray(x),
      jnp.asarray(codes), decay, eps)
  n_k = np.array([2.0, 1.0, 0.0])
  sums = np.array([[4.0, 2.0], [0.0, 2.0], [0.0, 0.0]])
  want_size = decay * size + (1 - decay) * n_k
  want_sum = decay * esum + (1 - decay) * sums
  n = want_size.sum()
  smoothed = (want_size + eps) / (n + k * eps) * n
  np.testing.assert_allclose(new_size, want_size, rtol=1e-6)
  np.testing.assert_allclose(new_sum, want_sum, rtol=1e-6)
  np.testing.assert_allclose(emb, want_sum / smoothed[:, None], rtol=1e-5)
  # An unused code's count decays but smoothing keeps it finite.
  assert np.all(np.isfinite(emb))


def test_ema_vq_module_update_eval_purity_and_restarts():
  layer = bottlenecks.EMAVQBottleneck(codebook_size=4, decay=0.9, beta=0.5)
  h = _h((2, 2, 2, 3))
  v = _init(layer, h)
  assert set(v) == {'vq_ema'}  # the codebook gets no gradient
  state = v['vq_ema']
  np.testing.assert_array_equal(state['cluster_size'], np.ones(4))
  (h_hat, aux), new = _apply(layer, v, h)
  flat = h.reshape(-1, 3)
  codes = bottlenecks.nearest_code(flat, state['embedding'])
  want = bottlenecks.ema_codebook_update(
      state['embedding_sum'], state['cluster_size'], flat, codes, 0.9, 1e-5)
  for got, exp in zip((new['vq_ema']['embedding'],
                       new['vq_ema']['embedding_sum'],
                       new['vq_ema']['cluster_size']), want):
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-7)
  # Output and loss use the codebook that assigned the codes.
  e = state['embedding'][codes].reshape(h.shape)
  np.testing.assert_allclose(h_hat, e, atol=1e-6)
  np.testing.assert_allclose(aux['loss'], 0.5 * jnp.mean((h - e) ** 2),
                             rtol=1e-5)
  # Eval mutates nothing.
  _, same = _apply(layer, new, _h((2, 2, 2, 3), seed=9), train=False)
  jax.tree.map(np.testing.assert_array_equal, same, new)
  # A threshold above every count restarts every code at a batch vector.
  restart = bottlenecks.EMAVQBottleneck(codebook_size=4,
                                        dead_code_threshold=10.0)
  (_, aux), new = _apply(restart, v, h)
  assert float(aux['dead_code_restarts']) == 4
  emb = np.asarray(new['vq_ema']['embedding'])
  for row in emb:
    assert np.min(np.abs(np.asarray(flat) - row).sum(-1)) < 1e-6
  np.testing.assert_array_equal(new['vq_ema']['cluster_size'], np.ones(4))


def test_simvq_codebook_is_frozen_and_mapped():
  layer = bottlenecks.SimVQBottleneck(codebook_size=64)
  h = _h((2, 2, 2, 16))
  v = _init(layer, h)
  frozen = v['simvq']['frozen_codebook']
  assert frozen.shape == (64, 16)
  assert abs(float(jnp.std(frozen)) - 16 ** -0.5) < 0.05
  assert set(v['params']) == {'codebook_map'}
  (_, aux), new = _apply(layer, v, h)
  np.testing.assert_array_equal(new['simvq']['frozen_codebook'], frozen)
  # The loss reaches the map, not the frozen codes.
  g = jax.grad(lambda p: _apply(layer, {**v, 'params': p}, h)[0][1]['loss'])(
      v['params'])
  assert float(jnp.abs(g['codebook_map']['kernel']).sum()) > 0


def test_fsq_level_count_and_index_round_trip():
  levels = (8, 5, 5, 5)
  n = math.prod(levels)
  assert bottlenecks.FSQBottleneck(levels=levels).num_codes == n
  # Each channel takes exactly its L_i grid values (i - L_i // 2) / (L_i // 2)
  # over a dense sweep of inputs.
  z = jnp.linspace(-10, 10, 4001)[:, None] * jnp.ones((1, 4))
  q = np.asarray(bottlenecks.fsq_quantize(z, levels))
  for i, l in enumerate(levels):
    half = l // 2
    np.testing.assert_allclose(np.unique(q[:, i]),
                               (np.arange(l) - half) / half, atol=1e-6)
  # Every index maps to a distinct code and back.
  idx = jnp.arange(n)
  codes = bottlenecks.fsq_indices_to_codes(idx, levels)
  assert len({tuple(c) for c in np.asarray(codes).tolist()}) == n
  np.testing.assert_array_equal(
      bottlenecks.fsq_codes_to_indices(codes, levels), idx)
  # And the module's index is that of its own output.
  layer = bottlenecks.FSQBottleneck(levels=levels)
  h = _h((2, 3, 3, 4)) * 3
  (out, aux), _ = _apply(layer, _init(layer, h), h)
  np.testing.assert_array_equal(
      aux['codes'], bottlenecks.fsq_codes_to_indices(out, levels))


def test_lfq_codes_and_entropy_by_hand():
  z = jnp.asarray([[0.3, -0.2], [-0.1, -0.4], [0.5, 0.6]])
  book = bottlenecks.lfq_codebook(2)
  np.testing.assert_array_equal(book, [[-1, -1], [1, -1], [-1, 1], [1, 1]])
  t = 2.0
  per_sample, batch = losses.lfq_entropy_terms(z, book, inv_temperature=t)
  logits = 2 * np.asarray(z) @ np.asarray(book).T * t
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  want_ps = np.mean(-(p * np.log(p)).sum(1))
  pm = p.mean(0)
  want_b = -(pm * np.log(pm)).sum()
  np.testing.assert_allclose([per_sample, batch], [want_ps, want_b], rtol=1e-5)

  layer = bottlenecks.LFQBottleneck(code_dim=2, inv_temperature=t,
                                    entropy_weight=0.1, commitment_weight=0.25)
  h = z.reshape(1, 1, 3, 2)
  (h_hat, aux), _ = _apply(layer, _init(layer, h), h)
  np.testing.assert_array_equal(aux['codes'], [[[1, 0, 3]]])
  np.testing.assert_array_equal(h_hat, np.sign(h))
  commit = np.mean((np.asarray(h) - np.sign(h)) ** 2)
  np.testing.assert_allclose(
      aux['loss'], 0.1 * (want_ps - want_b) + 0.25 * commit, rtol=1e-5)


def test_kl_closed_form_sampling_and_clamp():
  mean = jnp.asarray([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])      # (2, 1, 1, 2)
  logvar = jnp.asarray([[[[0.0, math.log(2.0)]]], [[[-1.0, 0.0]]]])
  per = [0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2)),
         0.5 * (0 + math.exp(-1) - 1 + 1) + 0.5 * (4 + 1 - 1 - 0)]
  np.testing.assert_allclose(losses.gaussian_kl(mean, logvar), np.mean(per),
                             rtol=1e-6)
  assert float(losses.gaussian_kl(jnp.zeros((3, 2, 2, 4)),
                                  jnp.zeros((3, 2, 2, 4)))) == 0.0

  layer = bottlenecks.KLBottleneck(latent_channels=2, kl_weight=0.5)
  h = _h((2, 2, 2, 4))
  v = _init(layer, h)
  (eval_out, eval_aux), _ = _apply(layer, v, h, train=False)
  (train_out, aux), _ = _apply(layer, v, h, train=True)
  assert not np.allclose(eval_out, train_out)  # train samples, eval = mean
  w = v['params']['moments']
  moments = h @ w['kernel'][0, 0] + w['bias']
  m, lv = moments[..., :2], jnp.clip(moments[..., 2:], -30, 20)
  np.testing.assert_allclose(aux['kl'], losses.gaussian_kl(m, lv), rtol=1e-5)
  np.testing.assert_allclose(aux['loss'], 0.5 * aux['kl'], rtol=1e-6)
  np.testing.assert_allclose(eval_aux['coefficients'], m, rtol=1e-5,
                             atol=1e-6)
  # A huge log-variance is clamped at 20 (exp(20) is finite in float32).
  big = {'params': jax.tree.map(lambda a: a, v['params'])}
  big['params']['moments']['bias'] = jnp.asarray([0, 0, 1e3, 1e3])
  (_, aux), _ = _apply(layer, big, h, train=True)
  assert np.isfinite(float(aux['kl']))
  np.testing.assert_allclose(aux['posterior_std'], math.exp(10), rtol=1e-5)


def _ldm_kl_and_rec_terms(x, x_hat, mean, logvar, kl_weight, p_loss=None,
                          perceptual_weight=1.0):
  """latent-diffusion's `LPIPSWithDiscriminator` terms, by hand in numpy.

  contperceptual.py:48-60 with its output log-variance at its init (0):
  `rec = |x - x_hat| (+ perceptual_weight * LPIPS, one value per image
  broadcast over its pixels)`, `nll = sum(rec) / B`, `kl = sum(KL) / B`
  with distributions.py's `0.5 * (mean^2 + var - 1 - logvar)` summed over
  every latent element. Returns `(kl_weight * kl, nll)`.
  """
  x, x_hat, mean, logvar = (np.asarray(a, np.float64)
                            for a in (x, x_hat, mean, logvar))
  b = x.shape[0]
  rec = np.abs(x - x_hat)
  if p_loss is not None:
    rec = rec + perceptual_weight * np.asarray(
        p_loss, np.float64).reshape(b, 1, 1, 1)
  nll = np.sum(rec) / b
  kl = np.sum(0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)) / b
  return kl_weight * kl, nll


@pytest.mark.parametrize('res', [16, 32])
def test_kl_term_stands_to_the_reconstruction_as_in_latent_diffusion(res):
  # The same tensors through this trainer's loss terms and LDM's: the ratio
  # KL term / reconstruction term is LDM's at every resolution.
  config = configlib.load(os.path.join(ROOT, 'configs', 'kl.py')
                          + ':runlocal')
  config.resolution = res
  assert config.model.bottleneck.kl_weight == 1e-6
  assert config.loss.kl_normalization == 'ldm'
  keys = jax.random.split(jax.random.PRNGKey(res), 5)
  x = jax.random.uniform(keys[0], (3, res, res, 3), minval=-1)
  x_hat = jnp.clip(x + 0.2 * jax.random.normal(keys[1], x.shape), -1, 1)
  latent = (3, res // 4, res // 4, 4)
  mean = jax.random.normal(keys[2], latent)
  logvar = 0.5 * jax.random.normal(keys[3], latent) - 1.0
  p_loss = jax.random.uniform(keys[4], (3,))    # LPIPS values, one per image
  w = config.model.bottleneck.kl_weight
  scale = train.bottleneck_loss_scale(config, x.shape)
  ours_kl = scale * w * float(losses.gaussian_kl(mean, logvar))
  ldm_kl, ldm_rec = _ldm_kl_and_rec_terms(x, x_hat, mean, logvar, w)
  ratio = ours_kl / float(losses.l1(x_hat, x))
  np.testing.assert_allclose(ratio, ldm_kl / ldm_rec, rtol=1e-5)
  # With the perceptual term (the VQGAN objective adds its batch mean).
  ldm_kl, ldm_rec = _ldm_kl_and_rec_terms(x, x_hat, mean, logvar, w, p_loss)
  ours_rec = float(losses.l1(x_hat, x) + jnp.mean(p_loss))
  np.testing.assert_allclose(ours_kl / ours_rec, ldm_kl / ldm_rec,
                             rtol=1e-5)
  # 'none' is the undivided term: res * res * 3 times LDM's weight.
  config.loss.kl_normalization = 'none'
  assert train.bottleneck_loss_scale(config, x.shape) == 1.0
  assert scale == pytest.approx(1 / (res * res * 3))
  # Every other bottleneck's loss is added as it is (per-element means on
  # both sides, as in its authors' code).
  for family in ('vqvae', 'ema_vq', 'simvq', 'vqgan_fc', 'fsq', 'lfq', 'ae'):
    other = configlib.load(os.path.join(ROOT, 'configs', f'{family}.py')
                           + ':runlocal')
    assert train.bottleneck_loss_scale(other, x.shape) == 1.0


def test_hinge_generator_and_adaptive_weight_by_hand():
  real = jnp.asarray([2.0, 0.5, -1.0])
  fake = jnp.asarray([-2.0, 0.0, 1.0])
  # relu(1 - real) = [0, .5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2] -> 1.
  np.testing.assert_allclose(losses.hinge_disc_loss(real, fake),
                             0.5 * (2.5 / 3 + 1.0), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(fake), 1 / 3, rtol=1e-6)
  rec = jnp.asarray([[3.0, 0.0], [0.0, 4.0]])   # norm 5
  gen = jnp.asarray([[0.0, 1.0], [0.0, 0.0]])   # norm 1
  np.testing.assert_allclose(losses.adaptive_weight(rec, gen, 0.8),
                             5 / (1 + 1e-4) * 0.8, rtol=1e-6)
  # Clipped at 1e4 (times disc_weight) when the generator gradient vanishes.
  np.testing.assert_allclose(
      losses.adaptive_weight(rec, jnp.zeros_like(gen), 0.5), 0.5e4)
  g = jax.grad(lambda r: losses.adaptive_weight(r, gen))(rec)
  np.testing.assert_array_equal(g, 0)  # a weight, not a gradient path


def test_patch_discriminator_shapes():
  d = discriminator.PatchDiscriminator(num_layers=3, filters=8)
  x = jnp.zeros((2, 32, 32, 3))
  v = d.init(jax.random.PRNGKey(0), x)
  logits = d.apply(v, jax.random.normal(jax.random.PRNGKey(1), x.shape))
  assert logits.shape == (2, 2, 2, 1)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
  assert set(v) == {'params'}          # no running statistics
  assert discriminator.min_resolution(3) == 24
  with pytest.raises(ValueError, match='disc_layers'):
    d.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


# ---------------------------------------------------------------------------
# Codebook statistics.
# ---------------------------------------------------------------------------


def test_usage_perplexity_dead_codes_on_known_assignments():
  hist = codebook.code_histogram(jnp.asarray([[0, 0], [1, 1]]), 4)
  np.testing.assert_array_equal(hist, [2, 2, 0, 0])
  assert float(codebook.usage(hist)) == 0.5
  np.testing.assert_allclose(codebook.perplexity(hist), 2.0, rtol=1e-6)
  assert int(codebook.dead_codes(hist)) == 2
  uniform = codebook.code_histogram(jnp.arange(8) % 4, 4)
  np.testing.assert_allclose(codebook.perplexity(uniform), 4.0, rtol=1e-6)
  assert float(codebook.perplexity(np.array([5, 0, 0]))) == pytest.approx(1)
  # p = (3/4, 1/4): exp(-(3/4 log 3/4 + 1/4 log 1/4)).
  skew = np.array([3, 1, 0, 0, 0])
  np.testing.assert_allclose(
      codebook.perplexity(skew),
      math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rtol=1e-6)
  stats = codebook.codebook_stats(skew, prefix='eval/')
  assert stats == {'eval/codebook_usage': pytest.approx(0.4),
                   'eval/codebook_perplexity': pytest.approx(
                       float(codebook.perplexity(skew))),
                   'eval/dead_codes': 3.0}
  # Weights (e.g. a padding mask) drop examples.
  masked = codebook.code_histogram(jnp.asarray([[0, 1], [2, 2]]), 3,
                                   weights=jnp.asarray([[1.0], [0.0]]))
  np.testing.assert_array_equal(masked, [1, 1, 0])


# ---------------------------------------------------------------------------
# The VQGAN step: the one-forward gradient equals the textbook computation.
# ---------------------------------------------------------------------------


def test_vqgan_gradient_matches_direct_computation():
  config = tiny_config('vqvae', 'runlocal', **{
      'resolution': 16, 'model.bottleneck.codebook_size': 8,
      'loss.kind': 'vqgan', 'loss.reconstruction': 'l1',
      'loss.perceptual_weight': 0.0, 'loss.disc_layers': 2,
      'loss.disc_filters': 4, 'loss.disc_start': 1, 'loss.disc_weight': 0.7})
  model = train.create_model(config)
  tx, _ = train.make_optimizer(config)
  state = jax.jit(train.make_init_fn(model, tx, config))(
      jax.random.PRNGKey(0))
  assert {'disc_params', 'disc_opt_state'} <= set(state)
  batch = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3),
                             minval=-1)
  rng = jax.random.PRNGKey(2)
  disc = vqgan.make_discriminator(config)
  grad_fn = vqgan.make_grad_fn(model, config, losses.l1)

  @jax.jit
  def both(state):
    got = grad_fn(state, batch, 1e-3, rng, ())

    def parts(params):
      recon, aux = model.apply({'params': params}, batch, train=True,
                               rngs={'sample': rng})
      gen = losses.generator_loss(
          disc.apply({'params': state['disc_params']}, recon))
      return losses.l1(recon, batch), gen, aux['loss']

    # The textbook way: three separate full gradients.
    g_rec = jax.grad(lambda p: parts(p)[0])(state['params'])
    g_gen = jax.grad(lambda p: parts(p)[1])(state['params'])
    lam = losses.adaptive_weight(vqgan.last_layer(g_rec),
                                 vqgan.last_layer(g_gen), 0.7)
    total = lambda p: (lambda r, g, b: r + lam * g + b)(*parts(p))
    return got, (lam, total(state['params']),
                 jax.grad(total)(state['params']))

  # Step 1 >= disc_start: the adversarial term is on.
  (loss, _, _, _, grads, gan_state, meas), (lam, want_loss, want) = both(
      dict(state, step=jnp.ones((), jnp.int32)))
  assert float(meas['gan/disc_active']) == 1 and float(lam) > 0
  np.testing.assert_allclose(meas['gan/adaptive_weight'], lam, rtol=1e-4)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-6),
               grads, want)
  # The discriminator took one Adam step on the hinge loss.
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       gan_state['disc_params'], state['disc_params'])
  assert max(jax.tree.leaves(moved)) > 0

  # Step 0 < disc_start: no adversarial weight, the discriminator stays put.
  (_, _, _, _, _, gan_state, meas), _ = both(state)
  assert float(meas['gan/adaptive_weight']) == 0
  jax.tree.map(np.testing.assert_array_equal, gan_state['disc_params'],
               state['disc_params'])


def _first_train_step(config):
  """`(model, initial state, batch, measurements)` of one real train step on
  a fixed random 16 px batch of 4."""
  model = train.create_model(config)
  tx, schedule = train.make_optimizer(config)
  state = jax.jit(train.make_init_fn(model, tx, config))(
      jax.random.PRNGKey(0))
  batch = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3),
                             minval=-1)
  _, meas = jax.jit(train.make_train_step(model, tx, schedule, config))(
      state, batch)
  return model, state, batch, meas


def test_vqgan_step_divides_the_kl_term_as_the_plain_step():
  # kl.py:gan through the real train step: the KL term added to the loss is
  # kl_weight * KL per image / (H W 3), as without the VQGAN objective.
  config = tiny_config('kl', 'runlocal,gan', **{
      'loss.perceptual_weight': 0.0, 'loss.disc_layers': 2,
      'loss.disc_filters': 4})
  _, _, _, meas = _first_train_step(config)
  assert 'gan/disc_loss' in meas
  kl = float(meas['bottleneck/kl'])
  assert kl > 0
  np.testing.assert_allclose(meas['bottleneck_loss'],
                             1e-6 * kl / (16 * 16 * 3), rtol=1e-5)
  np.testing.assert_allclose(
      meas['loss'], meas['reconstruction_loss'] + meas['bottleneck_loss'],
      rtol=1e-6)   # step 0 < disc_start: no adversarial term


@pytest.mark.parametrize('normalization,divisor', [('ldm', 16 * 16 * 3),
                                                   ('none', 1)])
def test_train_step_loss_is_mse_plus_the_weighted_kl(normalization, divisor):
  """The plain train step's measured loss against the model's own outputs:
  the MSE (the plain objective's pixel loss) of the reconstruction it makes
  with the step's noise, plus
  kl_weight * KL(q || N(0, I)) per image / divisor, the KL summed here from
  the posterior's moments (the `moments` conv's output)."""
  weight = 0.25  # large enough that a missing or doubled scale shows
  config = tiny_config('kl', **{'model.bottleneck.kl_weight': weight,
                                'loss.kl_normalization': normalization})
  assert config.loss.reconstruction == 'auto'  # MSE under this objective
  model, state, batch, meas = _first_train_step(config)

  variables = {'params': state['params']}
  # The posterior's moments, as the model computes them at the step's
  # parameters (no noise involved).
  _, inter = model.apply(variables, batch, train=False,
                         capture_intermediates=True, mutable=['intermediates'])
  (moments,) = [np.asarray(v[0], np.float64) for k, v in
                flax.traverse_util.flatten_dict(inter['intermediates']).items()
                if 'moments' in k]
  mean, logvar = np.split(moments, 2, axis=-1)
  kl = np.mean(0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar,
                            axis=(1, 2, 3)))
  # The reconstruction with the step's posterior sample.
  recon, _ = model.apply(variables, batch, train=True, rngs={
      'sample': jax.random.fold_in(state['rng'], state['step'])})
  rec = np.mean(np.square(np.asarray(recon, np.float64)
                          - np.asarray(batch)))

  np.testing.assert_allclose(meas['bottleneck/kl'], kl, rtol=1e-5)
  np.testing.assert_allclose(meas['bottleneck_loss'], weight * kl / divisor,
                             rtol=1e-5)
  np.testing.assert_allclose(meas['reconstruction_loss'], rec, rtol=1e-5)
  np.testing.assert_allclose(meas['loss'], rec + weight * kl / divisor,
                             rtol=1e-5)


# ---------------------------------------------------------------------------
# Configs and end-to-end smoke runs.
# ---------------------------------------------------------------------------


def test_every_baseline_config_is_valid():
  for family in FAMILIES:
    for arg in ('', 'runlocal', 'runlocal,gan'):
      c = configlib.load(os.path.join(ROOT, 'configs', f'{family}.py') + ':'
                         + arg)
      configlib.validate(c)
      assert c.loss.kind == ('vqgan' if 'gan' in arg else 'reconstruction')


def _config_from_command_line(*args):
  """The config `python -m pcavae.main` builds from these flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ['main'] + list(args)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=False, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('arg', ['runlocal', ''])
def test_gan_flag_and_loss_kind_override_give_the_same_config(arg):
  for family in FAMILIES:
    path = os.path.join(ROOT, 'configs', f'{family}.py')
    by_flag = _config_from_command_line(
        f'--config={path}:' + ','.join(a for a in (arg, 'gan') if a))
    by_key = _config_from_command_line(f'--config={path}:{arg}',
                                       '--config.loss.kind=vqgan')
    assert by_flag.to_dict() == by_key.to_dict(), family
    plain = configlib.load(f'{path}:{arg}')
    # Taming's pixel loss under VQGAN, the reference's MSE without it.
    assert losses.reconstruction_name(by_key.loss.reconstruction,
                                      by_key.loss.kind) == 'l1'
    assert losses.reconstruction_name(plain.loss.reconstruction,
                                      plain.loss.kind) == 'mse'
    # The discriminator switches on inside the run (runlocal: 500 of 1500).
    assert 0 < by_key.loss.disc_start < by_key.num_train_steps
    if arg == 'runlocal':
      assert by_key.loss.disc_start == by_key.num_train_steps // 3


@pytest.mark.parametrize('key,value', [
    ('model.bottleneck.levels', (8, 1)),
    ('model.bottleneck.codebook_size', 0),
    ('model.bottleneck.code_dim', 65),
    ('model.bottleneck.decay', 1.0),
    ('loss.kind', 'wgan'),
    ('loss.kl_normalization', 'sum'),
    ('loss.reconstruction', 'l2'),
    ('loss.disc_layers', 4),   # 32 px < 3 * 2^4
])
def test_invalid_baseline_configs_name_the_key(key, value):
  family = {'levels': 'fsq', 'code_dim': 'lfq', 'decay': 'ema_vq'}.get(
      key.split('.')[-1], 'vqvae')
  c = configlib.load(os.path.join(ROOT, 'configs', f'{family}.py')
                     + ':runlocal' + (',gan' if key.startswith('loss.d')
                                      else ''))
  node = c
  *path, last = key.split('.')
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=r'config\.' + key.replace('.', r'\.')):
    configlib.validate(c)


_SMOKE = {
    'vqvae': {'model.bottleneck.codebook_size': 16},
    'ema_vq': {'model.bottleneck.codebook_size': 16,
               'model.bottleneck.dead_code_threshold': 0.5},
    'simvq': {'model.bottleneck.codebook_size': 16},
    'vqgan_fc': {'model.bottleneck.codebook_size': 16},
    'fsq': {'model.bottleneck.levels': (4, 3)},
    'lfq': {'model.bottleneck.code_dim': 4},
    'kl': {},
    'ae': {},
}


def _smoke(tmp_path, family, arg='runlocal', **overrides):
  config = tiny_config(family, arg, **{
      'num_train_steps': 2, 'log_every_steps': 1, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'eval.lpips': False, **overrides})
  workdir = str(tmp_path / family)
  final = train.train_and_evaluate(config, workdir)
  records = writers.read_metrics(workdir)
  return config, final, records


def _eval_code_histogram(workdir, num_codes):
  """Counts of each code over the run's first eval.num_examples eval
  images, from its newest checkpoint."""
  from pcavae import data  # pylint: disable=g-import-not-at-top
  config, model, variables, _ = train.restore_model(workdir)
  source = data.get_splits(config.dataset, config.resolution).eval
  images = np.stack([source[i] for i in range(config.eval.num_examples)])
  # The input pipeline's map to [-1, 1], to the bit.
  x = images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)
  _, aux = model.apply(variables, x, train=False)
  return np.bincount(np.asarray(aux['codes']).reshape(-1),
                     minlength=num_codes)


@pytest.mark.parametrize('family', FAMILIES)
def test_train_and_evaluate_smoke_per_kind(tmp_path, family):
  # 12 eval images: the second batch of 8 is padded, and padding must not
  # count.
  config, final, records = _smoke(tmp_path, family, **{
      'eval.num_examples': 12, **_SMOKE[family]})
  assert final['step'] == 2 and np.isfinite(final['eval/psnr'])
  train_records = [r for r in records if 'loss' in r]
  assert len(train_records) == 2
  assert all(np.isfinite(r['loss']) for r in train_records)
  from pcavae import bits  # pylint: disable=g-import-not-at-top
  k = bits.num_codes(config)
  if k is None:
    assert 'eval/codebook_usage' not in final
  else:
    # The code histogram of the first eval.num_examples eval images under
    # the final checkpoint, and its usage, perplexity and dead codes.
    hist = _eval_code_histogram(str(tmp_path / family), k)
    assert hist.sum() == config.eval.num_examples * 4 * 4
    p = hist[hist > 0] / hist.sum()
    assert final['eval/codebook_usage'] == pytest.approx(np.mean(hist > 0))
    assert final['eval/codebook_perplexity'] == pytest.approx(
        np.exp(-np.sum(p * np.log(p))), rel=1e-5)
    assert final['eval/dead_codes'] == np.sum(hist == 0)
    assert 'bottleneck/perplexity' in train_records[-1]
  if family == 'ema_vq':
    assert 'bottleneck/dead_code_restarts' in train_records[-1]
  if family == 'kl':
    assert train_records[-1]['bottleneck/kl'] > 0
    # The KL term as trained: kl_weight * KL per image / (H W 3).
    for r in train_records:
      assert r['bottleneck_loss'] == pytest.approx(
          1e-6 * r['bottleneck/kl'] / (16 * 16 * 3), rel=1e-4)


def test_train_and_evaluate_with_the_vqgan_objective(tmp_path):
  # disc_start=1: the first step is reconstruction only, the second adds
  # the adversarial term; LPIPS-VGG runs at 16 px.
  _, final, records = _smoke(
      tmp_path, 'vqvae', 'runlocal,gan', **{
          'model.bottleneck.codebook_size': 16, 'loss.disc_layers': 2,
          'loss.disc_filters': 8, 'loss.disc_start': 1})
  assert np.isfinite(final['eval/psnr'])
  r1, r2 = [r for r in records if 'loss' in r]
  assert r1['gan/disc_active'] == 0 and r1['gan/adaptive_weight'] == 0
  assert r2['gan/disc_active'] == 1 and r2['gan/adaptive_weight'] > 0
  assert r2['gan/perceptual_loss'] > 0 and r2['gan/disc_loss'] > 0
  for r in (r1, r2):
    assert all(np.isfinite(v) for k, v in r.items() if k.startswith('gan/'))
