"""Latent bit accounting, coefficient quantization, bit allocation and
entropy (pcavae/bits.py)."""

import math
import os

import jax
import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from pcavae import analysis
from pcavae import bits
from pcavae import configlib
from pcavae import train
from pcavae.models import coding
from pcavae.models import pca


def _config(family, arg='runlocal'):
  return configlib.load(os.path.join(ROOT, 'configs', f'{family}.py') + ':'
                        + arg)


@pytest.mark.parametrize('family,arg,expected', [
    # runlocal: 32 px, two stride-2 stages -> an 8x8 latent (64 tokens), D 64.
    ('vqvae', 'runlocal', 64 * 10),                  # K = 1024
    ('vqvae', 'runlocal,k=512', 64 * 9),
    ('ema_vq', 'runlocal', 64 * 10),
    ('simvq', 'runlocal,k=8192', 64 * 13),
    ('vqgan_fc', 'runlocal', 64 * 10),
    ('fsq', 'runlocal,levels=8-8-8-6-5', math.ceil(64 * math.log2(15360))),
    ('fsq', 'runlocal,levels=4-4', 64 * 4),
    ('lfq', 'runlocal,d=12', 64 * 12),
    ('kl', 'runlocal', 64 * 4 * 32),
    ('ae', 'runlocal', 64 * 64 * 32),
    ('pcavae', 'runlocal', 64 * 16 * 32),             # spatial, Q = 16
    ('pcavae', 'setting=shared,runlocal', 64 * 16 * 32),
    ('pcavae', 'setting=global,runlocal', 1 * 16 * 32),  # one vector
    # Full size: 64 px, a 16x16x256 latent.
    ('vqvae', '', 256 * 10),
    ('fsq', '', math.ceil(256 * math.log2(1000))),
    ('pcavae', 'setting=spatial16,q=51', 256 * 51 * 32),
])
def test_latent_bits_of_known_configs(family, arg, expected):
  assert bits.latent_bits(_config(family, arg)) == expected


def test_fsq_sum_of_log_levels_equals_log_of_product():
  c = _config('fsq', 'runlocal')  # (8, 5, 5, 5): 1000 codes, 9.97 bits
  assert bits.num_codes(c) == 1000
  assert bits.latent_bits(c) == math.ceil(
      64 * (3 + 3 * math.log2(5)) - 1e-9) == 638


def test_pca_coefficient_bits_and_defaults():
  c = _config('pcavae', 'runlocal')
  c.model.bottleneck.coefficient_bits = 6
  assert bits.latent_bits(c) == 64 * 16 * 6
  # A key left out of the config takes the bottleneck's own default.
  v = _config('vqvae', 'runlocal')
  del v.model.bottleneck['codebook_size']
  assert bits.num_codes(v) == 1024
  assert bits.num_codes(_config('lfq', 'runlocal,d=9')) == 512
  assert bits.num_codes(_config('kl', 'runlocal')) is None


# ---------------------------------------------------------------------------
# Coefficient quantization, bit allocation, entropy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('arg,expected', [
    ('runlocal,bits=4', 64 * 16 * 4),
    ('runlocal,bits=0', 0),
    ('runlocal,budget=640', 640),                    # spent exactly
    ('setting=global,runlocal,bits=8', 16 * 8),
    ('setting=spatial16,q=51,bits=6', 256 * 51 * 6),
])
def test_latent_bits_of_quantized_pca(arg, expected):
  c = _config('pcavae', arg)
  configlib.validate(c)
  assert bits.latent_bits(c) == expected


@pytest.mark.parametrize('arg,overrides,match', [
    ('runlocal', {'coefficient_bits': 20}, 'coefficient_bits=20'),
    ('runlocal,budget=100', {'coefficient_bits': 4}, 'exclusive'),
    ('runlocal', {'coefficient_bit_budget': 64 * 16 * 16 + 1},
     'coefficient_bit_budget=16385'),
])
def test_bad_quantization_keys_are_rejected(arg, overrides, match):
  c = _config('pcavae', arg)
  for k, v in overrides.items():
    c.model.bottleneck[k] = v
  with pytest.raises(ValueError, match=match):
    configlib.validate(c)


def test_gaussian_steps_match_max_1960():
  # Optimum uniform quantizer steps for a unit Gaussian (Max 1960, Table II).
  for b, step in [(1, 1.596), (2, 0.9957), (3, 0.5860), (4, 0.3352)]:
    assert coding.gaussian_uniform_step(b) == pytest.approx(step, abs=1e-3)
  # And it is a minimum of the MSE.
  for b in (2, 6):
    s = coding.gaussian_uniform_step(b)
    mse = coding._gaussian_uniform_mse(s, 2 ** b)  # pylint: disable=protected-access
    for f in (0.97, 1.03):
      assert coding._gaussian_uniform_mse(s * f, 2 ** b) > mse  # pylint: disable=protected-access


def test_quantize_dequantize_error_within_half_a_step():
  rng = np.random.default_rng(0)
  shape = (500, 6)
  sigma = rng.uniform(0.1, 3.0, shape[1:]).astype(np.float32)
  nbits = np.array([0, 1, 2, 4, 8, 16], np.int32)
  step = np.asarray(coding.quantizer_steps(sigma, nbits))
  half_range = step * 2.0 ** nbits / 2
  # Inside the quantizer's range (b = 0 has none: it sends nothing).
  y = rng.uniform(-1, 1, shape).astype(np.float32) * half_range
  symbols, y_hat = coding.quantize(y, sigma, nbits)
  symbols, y_hat = np.asarray(symbols), np.asarray(y_hat)
  err = np.abs(y - y_hat)
  inside = nbits > 0
  # Plus float32 rounding of y itself (y / step reaches 2^15 at 16 bits).
  tol = step / 2 * (1 + 1e-5) + 4 * np.finfo(np.float32).eps * np.abs(y)
  assert np.all((err <= tol)[:, inside])
  assert np.all(y_hat[:, ~inside] == 0)
  assert symbols.min() >= 0 and np.all(symbols < 2 ** nbits)
  np.testing.assert_array_equal(
      np.asarray(coding.dequantize(symbols, sigma, nbits)), y_hat)
  # Beyond the range: the outer level.
  far_s, far = coding.quantize(np.full(shape[1:], 1e6, np.float32), sigma, nbits)
  np.testing.assert_array_equal(np.asarray(far_s), 2 ** nbits - 1)
  np.testing.assert_allclose(np.asarray(far)[inside],
                             (half_range - step / 2)[inside], rtol=1e-6)


def test_quantization_mse_matches_the_gaussian_optimum():
  y = np.random.default_rng(1).normal(size=(200_000,)).astype(np.float32) * 2
  for b in (2, 4):
    _, y_hat = coding.quantize(y, 2.0, b)
    mse = float(np.mean(np.square(y - np.asarray(y_hat)))) / 4
    assert mse == pytest.approx(coding._gaussian_uniform_mse(  # pylint: disable=protected-access
        coding.gaussian_uniform_step(b), 2 ** b), rel=0.03)


@pytest.mark.parametrize('seed,n,budget', [(0, 16, 40), (1, 64, 640),
                                           (2, 50, 7), (3, 8, 128)])
def test_water_filling_allocation(seed, n, budget):
  rng = np.random.default_rng(seed)
  variances = np.exp(rng.normal(0, 2, n))
  alloc = np.asarray(coding.allocate_bits(variances, budget))
  assert alloc.dtype == np.int32 and alloc.shape == (n,)
  assert alloc.sum() == budget                       # spends exactly B
  assert alloc.min() >= 0 and alloc.max() <= coding.MAX_COEFFICIENT_BITS
  order = np.argsort(-variances)                     # more variance, >= bits
  assert np.all(np.diff(alloc[order]) <= 0)
  if budget < n * coding.MAX_COEFFICIENT_BITS:
    _, rates = analysis.reverse_waterfilling(variances, budget)
    assert np.all(np.abs(alloc - rates) <= 1 + 1e-9)  # integer water-filling
  # Jitted with a static budget, and on a (L, Q) grid.
  grid = np.asarray(jax.jit(coding.allocate_bits, static_argnums=1)(
      variances.reshape(-1, 2), budget))
  np.testing.assert_array_equal(grid.reshape(-1), alloc)


def test_allocation_edge_cases():
  np.testing.assert_array_equal(np.asarray(coding.allocate_bits(
      np.ones(4), 0)), 0)
  np.testing.assert_array_equal(np.asarray(coding.allocate_bits(
      [4.0, 1.0], 2)), [2, 0])                       # 4 * 4^-1 >= 1
  assert int(coding.allocate_bits(np.zeros(3), 5).sum()) == 5
  with pytest.raises(ValueError, match='budget'):
    coding.allocate_bits(np.ones(2), 2 * coding.MAX_COEFFICIENT_BITS + 1)


def test_entropy_of_known_streams():
  assert bits.entropy_bits([5, 5, 5, 5]) == pytest.approx(2.0)
  assert bits.entropy_bits([7, 0, 0]) == 0.0
  assert bits.entropy_bits([1, 1, 2]) == pytest.approx(1.5)
  # Two streams over 3 slots: slots 0, 1 share stream 0 (symbols uniform
  # over 4 values), slot 2 is stream 1 (always 9: 0 bits).
  counts = bits.SymbolCounts()
  sym = np.array([[0, 1, 9], [2, 3, 9]])
  counts.update(sym, [0, 0, 1])
  counts.update(sym, np.array([0, 0, 1]))           # accumulates
  assert counts.num_images == 4
  assert counts.stream_entropies() == {0: (2.0, 2.0), 1: (1.0, 0.0)}
  assert counts.bits_per_image() == pytest.approx(4.0)
  # PCA streams: one per (component, bit depth).
  streams = bits.pca_symbol_streams(np.array([[4, 4, 2], [4, 3, 2]]))
  assert len(np.unique(streams)) == 4 and streams[0, 0] == streams[1, 0]


def _np_dense(params: dict, x: np.ndarray) -> np.ndarray:
  return x @ np.asarray(params['kernel'], np.float64) + np.asarray(
      params['bias'], np.float64)


def _np_gelu(x: np.ndarray) -> np.ndarray:
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _np_pca_latent(variables: dict, mode: str, z_e: np.ndarray,
                   y_hat: np.ndarray = None):
  """The PCA bottleneck's eval output in float64 numpy, from its state.

  Returns `(coefficients, z_q)`: `coefficients` `(B, H, W, Q)` (`(B, Q)` in
  `global` mode) are `(x - mu) C`; `z_q` decodes `y_hat` (default: the
  coefficients themselves, no quantization) as `y_hat C^T + mu`, through the
  global mapper's inverse where there is one.
  """
  p = variables['pca']['bottleneck']
  basis = np.asarray(p['basis'], np.float64)
  mean = np.asarray(p['mean'], np.float64)
  b, hh, ww, d = z_e.shape
  z_e = np.asarray(z_e, np.float64)
  if mode == 'global':
    x = z_e.reshape(b, -1)
    maps = variables['params']['bottleneck']
    if 'map_in' in maps:
      x = _np_dense(maps['map_out'], _np_gelu(_np_dense(maps['map_in'], x)))
    y = (x - mean) @ basis
    y_hat = y if y_hat is None else np.asarray(y_hat, np.float64)
    x_hat = y_hat @ basis.T + mean
    if 'map_in' in maps:
      x_hat = _np_dense(maps['unmap_out'],
                        _np_gelu(_np_dense(maps['unmap_in'], x_hat)))
    return y, x_hat.reshape(z_e.shape)
  x = z_e.reshape(b, hh * ww, d)                         # location l = i W + j
  if mode == 'spatial':
    y = np.einsum('bld,ldq->blq', x - mean, basis)
  else:
    y = (x - mean) @ basis
  y_hat = y if y_hat is None else np.asarray(y_hat, np.float64).reshape(
      y.shape)
  if mode == 'spatial':
    x_hat = np.einsum('blq,ldq->bld', y_hat, basis) + mean
  else:
    x_hat = y_hat @ basis.T + mean
  return y.reshape(b, hh, ww, -1), x_hat.reshape(z_e.shape)


def _np_quantize(y: np.ndarray, sigma: np.ndarray, nbits: np.ndarray):
  """Midrise uniform quantizer written out: step s_b sigma, 2^b levels."""
  steps = np.vectorize(coding.gaussian_uniform_step)(nbits) * sigma
  half = 2.0 ** nbits / 2
  symbols = np.clip(np.floor(y / steps) + half, 0, 2 * half - 1)
  return symbols.astype(np.int64), (symbols - half + 0.5) * steps


@pytest.mark.parametrize('arg,budget', [
    ('runlocal', 40), ('setting=shared,runlocal', 40),
    # One vector of Q = 4: 2 bits each, coarse enough to see in z_q through
    # the (untrained, shrinking) inverse map.
    ('setting=global,runlocal', 8)])
def test_eval_decodes_the_quantized_coefficients(arg, budget):
  """What the decoder sees is `dequantize(symbols) C^T + mu`, the latent
  that `latent_bits` counts; bits=32 changes nothing."""
  c = tiny_config('pcavae', arg)
  model = train.create_model(c)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3), minval=-1,
                         maxval=1)
  # The trainer's init program: an eager model.init takes 30 s on 2 cores.
  tx, _ = train.make_optimizer(c)
  state = train.initialize(train.make_init_fn(model, tx, c),
                           jax.random.PRNGKey(1), None)
  v = {'params': state['params'], **train.collections_of(state)}
  _, new = model.apply(v, x, train=True, lr=1e-2, mutable=['pca'])
  v = {**v, **new}
  p = v['pca']['bottleneck']
  mode = c.model.bottleneck.mode
  recon32, aux32 = model.apply(v, x, train=False)
  assert 'symbols' not in aux32
  # bits=32 (the default) is the plain projection, computed here in numpy
  # from the stored state, and the image is the decoder of that latent.
  z_e = np.asarray(aux32['z_e'])
  coefficients, z_q32 = _np_pca_latent(v, mode, z_e)
  np.testing.assert_allclose(aux32['coefficients'], coefficients, atol=1e-4)
  np.testing.assert_allclose(aux32['z_q'], z_q32, atol=1e-4)
  decoded = model.apply(v, np.asarray(z_q32, np.float32),
                        method=lambda m, z: m.decode(z))
  np.testing.assert_allclose(recon32, decoded, atol=1e-4)

  c.model.bottleneck.coefficient_bit_budget = budget
  configlib.validate(c)
  qmodel = train.create_model(c)
  latent = qmodel.apply(v, x, method=lambda m, x: m.quantize(m.encode(x),
                                                             False))
  z_q, aux = latent
  nbits = np.asarray(aux['symbol_bits'])
  assert nbits.sum() == bits.latent_bits(c) == budget
  sigma = np.sqrt(np.asarray(p['coef_var'], np.float64))
  if sigma.ndim > 1:                                   # spatial: (L, Q)
    sigma = sigma.reshape(nbits.shape)
  y = np.asarray(aux32['coefficients'])
  symbols, y_hat = _np_quantize(y, sigma, nbits)
  np.testing.assert_array_equal(aux['symbols'], symbols)
  _, expect = _np_pca_latent(v, mode, z_e, y_hat)
  np.testing.assert_allclose(z_q, expect, atol=1e-4)
  # The budget is far from lossless, so the z_q check tells the quantized
  # latent from the plain one.
  assert float(np.max(np.abs(np.asarray(z_q) - z_q32))) > 1e-3


@pytest.mark.parametrize('family,arg,overrides', [
    ('pcavae', 'runlocal,bits=3', {}),
    ('vqvae', 'runlocal', {'model.bottleneck.codebook_size': 16}),
])
def test_eval_reports_nominal_and_entropy_bits(tmp_path, family, arg,
                                               overrides):
  c = tiny_config(family, arg, num_train_steps=3, **overrides)
  final = train.train_and_evaluate(c, str(tmp_path))
  # Nominal: 16 tokens x 4 components x 3 bits, or 16 tokens x log2(16).
  nominal = {'pcavae': 16 * 4 * 3, 'vqvae': 16 * 4}[family]
  assert final['eval/bits_per_image'] == nominal
  # The plug-in entropy of the first num_examples eval images' symbols,
  # from the final checkpoint: one histogram of codes; for PCA one per
  # component, pooled over the locations.
  config, model, variables, step = train.restore_model(str(tmp_path))
  assert step == 3
  from pcavae import data  # pylint: disable=g-import-not-at-top
  source = data.get_splits(config.dataset, config.resolution).eval
  n = config.eval.num_examples
  images = np.stack([source[i] for i in range(n)]).astype(np.float32)
  # The input pipeline's map to [-1, 1], to the bit.
  _, aux = model.apply(variables, images * np.float32(1 / 127.5) - 1,
                       train=False)

  def plug_in(symbols):
    """Bits per symbol of the symbols' own histogram."""
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return -np.sum(p * np.log2(p))

  if family == 'pcavae':
    symbols = np.asarray(aux['symbols']).reshape(n, -1, 4)  # (n, L, Q)
    expected = sum(symbols.shape[1] * plug_in(symbols[..., k].reshape(-1))
                   for k in range(4))
  else:
    codes = np.asarray(aux['codes']).reshape(n, -1)
    expected = codes.shape[1] * plug_in(codes.reshape(-1))
    hist = np.bincount(codes.reshape(-1), minlength=16)
    p = hist[hist > 0] / hist.sum()
    assert final['eval/codebook_usage'] == pytest.approx(np.mean(hist > 0))
    assert final['eval/dead_codes'] == np.sum(hist == 0)
    assert final['eval/codebook_perplexity'] == pytest.approx(
        np.exp(-np.sum(p * np.log(p))), rel=1e-5)
  assert 0 < expected < nominal
  assert final['eval/entropy_bits_per_image'] == pytest.approx(expected,
                                                               rel=1e-6)
