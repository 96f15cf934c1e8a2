"""BSQ (`pcavae.models.bottlenecks.bsq`): its math against numpy closed
forms, and a tiny run at 36 bits per location (2^36 codes) trained through
the AE warm-up, evaluated per bit and coded into `.pcav` files."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from pcavae import bits
from pcavae import codec as codec_lib
from pcavae import configlib
from pcavae import losses
from pcavae import tiling
from pcavae import train
from pcavae.data import pipeline
from pcavae.models.bottlenecks import bsq
from pcavae.models.bottlenecks import lfq_codebook

D = 36  # bits per location: 2^36 codes, beyond any histogram


def _unit_rows(n, d, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d))
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_quantizer_is_the_nearest_corner_of_the_sphere():
  v = _unit_rows(50, 4)
  corners = np.array(list(itertools.product([-1.0, 1.0], repeat=4))) / 2.0
  nearest = corners[np.argmin(
      ((v[:, None] - corners[None]) ** 2).sum(-1), axis=1)]
  q = np.asarray(bsq.bsq_quantize(jnp.asarray(v, jnp.float32)))
  np.testing.assert_allclose(q, nearest, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(
      np.asarray(bsq.bsq_codes_from_bits(jnp.asarray(q > 0))), q)


def test_factorised_entropies_match_the_closed_forms():
  d, tau = 5, 3.0
  v = _unit_rows(64, d, seed=1)
  per_sample, batch = losses.bit_entropy_terms(
      bsq.bsq_bit_logits(jnp.asarray(v, jnp.float32), tau))
  # numpy: p_i = sigmoid(4 tau v_i / sqrt(d)); entropies in nats.
  p = 1.0 / (1.0 + np.exp(-4.0 * tau * v / math.sqrt(d)))
  h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))
  np.testing.assert_allclose(float(per_sample), h(p).sum(-1).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(batch), h(p.mean(0)).sum(), rtol=1e-5)
  # The per-sample entropy is exactly the softmax over all 2^d corners
  # (`lfq_entropy_terms` materialises them); the factorised batch entropy
  # bounds the joint one from above.
  codebook = lfq_codebook(d) / math.sqrt(d)
  exact_sample, exact_batch = losses.lfq_entropy_terms(
      jnp.asarray(v, jnp.float32), codebook, tau)
  np.testing.assert_allclose(float(per_sample), float(exact_sample),
                             rtol=1e-4)
  assert float(batch) >= float(exact_batch) - 1e-5


def test_binary_entropy():
  np.testing.assert_allclose(bits.binary_entropy([0.0, 0.5, 1.0, 0.25]),
                             [0.0, 1.0, 0.0, 0.8112781244591328])


def test_code_dim_is_validated():
  c = tiny_config('bsq', 'runlocal,d=65')
  with pytest.raises(ValueError, match='code_dim=65'):
    configlib.validate(c)


@pytest.fixture(scope='module')
def bsq_run(tmp_path_factory):
  """6 steps at d = 36, the quantizer switched on by the AE warm-up at 3."""
  workdir = str(tmp_path_factory.mktemp('bsq'))
  config = tiny_config('bsq', f'runlocal,d={D},warmup=3',
                       **{'eval.lpips': False, 'eval_every_steps': 6,
                          'checkpoint_every_steps': 6})
  final = train.train_and_evaluate(config, workdir)
  return workdir, final


def test_run_reports_per_bit_statistics(bsq_run):
  workdir, final = bsq_run
  tokens = 4 * 4
  assert final['eval/bits_per_image'] == tokens * D
  assert final['warmup/active'] == 1
  assert 0.0 <= final['eval/bit_entropy_min'] <= final[
      'eval/bit_entropy_mean'] <= 1.0
  assert 0.0 <= final['eval/bit_one_fraction_min'] <= final[
      'eval/bit_one_fraction_max'] <= 1.0
  # The factorised estimate: tokens * sum of the bits' entropies.
  assert final['eval/entropy_bits_per_image'] == pytest.approx(
      tokens * D * final['eval/bit_entropy_mean'], rel=1e-6)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert any('bottleneck/per_sample_entropy' in r for r in rows)


def test_codec_round_trip_with_a_per_bit_model(bsq_run):
  workdir, _ = bsq_run
  c = codec_lib.Codec(workdir, batch_size=8, count_images=32)
  image = np.random.default_rng(0).integers(0, 256, (21, 37, 3), np.uint8)
  out = c.compress(image)
  header, symbols = c.decode_symbols(out.data)
  assert symbols.shape == (6, 4, 4, D)  # 2 x 3 tiles of 16 px
  # The eval path's bits, bit for bit.
  model = train.create_model(c.config)
  tiles, _ = tiling.tile(image, c.tile_size)
  _, aux = model.apply(c.variables, pipeline.to_float(tiles), train=False)
  np.testing.assert_array_equal(symbols, np.asarray(aux['bits']))
  np.testing.assert_array_equal(c.decompress(out.data), out.reconstruction)
  # One Bernoulli per bit position, fitted to 32 training images' bits.
  counts = c.code_counts().reshape(D, 2)
  assert counts.sum() == 32 * 16 * D
  streams = c._streams(c.rate_kind, c.rate, len(symbols))  # pylint: disable=protected-access
  assert len(streams) == D and all(p.shape == (2,) for _, _, p in streams)
  info = -sum(np.sum(np.log2(p[symbols[sel].reshape(-1)]))
              for sel, _, p in streams)
  assert info <= out.payload_bits <= info * 1.005 + 64
  assert header.rate_kind == codec_lib.RATE_CODES


def test_lfq_factorised_terms_match_the_materialised_ones():
  z = np.random.default_rng(2).normal(size=(32, 6)).astype(np.float32)
  tau = 0.7
  per_sample, batch = losses.bit_entropy_terms(4.0 * tau * jnp.asarray(z))
  exact_sample, exact_batch = losses.lfq_entropy_terms(
      jnp.asarray(z), lfq_codebook(6), tau)
  np.testing.assert_allclose(float(per_sample), float(exact_sample),
                             rtol=1e-4)
  assert float(batch) >= float(exact_batch) - 1e-5


def test_lfq_beyond_16_bits_codes_bits():
  from pcavae.models import bottlenecks  # pylint: disable=g-import-not-at-top
  layer = bottlenecks.LFQBottleneck(code_dim=40)
  layer.validate((4, 4, 8))
  h = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 8)),
                  jnp.float32)
  variables = layer.init(jax.random.PRNGKey(0), h, False)
  out, aux = layer.apply(variables, h, False)
  assert out.shape == h.shape and np.isfinite(float(aux['loss']))
  assert layer.symbol_key == 'bits' and aux['bits'].shape == (2, 4, 4, 40)
  # Its entropies, per bit in closed form: p_i = sigmoid(4 tau z_i).
  proj = variables['params']['proj_in']
  z = np.asarray(h).reshape(-1, 8) @ np.asarray(proj['kernel']) + np.asarray(
      proj['bias'])
  z = z.astype(np.float64)
  p = 1.0 / (1.0 + np.exp(-4.0 * layer.inv_temperature * z))
  p = np.clip(p, 1e-12, 1 - 1e-12)
  h_bits = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))
  np.testing.assert_allclose(float(aux['per_sample_entropy']),
                             h_bits(p).sum(-1).mean(), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(float(aux['batch_entropy']),
                             h_bits(p.mean(0)).sum(), rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(aux['bits']).reshape(-1, 40),
                                (z > 0).astype(np.int32))
  coding = layer.coding(jax.device_get(aux))
  assert coding.streams[0].model == bottlenecks.BITS
  # The decoder's half inverts the signs through the output projection.
  z = layer.apply(variables, aux['bits'],
                  method=lambda m, s: m.latent_from_symbols(s))
  np.testing.assert_allclose(np.asarray(z), np.asarray(out), atol=1e-5)
  with pytest.raises(ValueError, match='code_dim=65'):
    bottlenecks.LFQBottleneck(code_dim=65).validate((4, 4, 8))
