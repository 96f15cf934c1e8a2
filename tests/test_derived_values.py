"""Values of the figures a researcher reads that no other test pins: the
learning-rate schedules, the Pareto fronts and radar scores of the sweep's
plots, the collections' health figures, and the token counts behind every
bits-per-image figure. Each expected value is a closed form written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from pcavae import bits
from pcavae import configlib
from pcavae import train
from pcavae import train_state
from pcavae import viz


def _schedule_values(schedule, steps):
  return np.asarray([float(schedule(jnp.asarray(s))) for s in steps])


def test_exponential_schedule_decays_once_per_transition():
  c = tiny_config(**{'optimizer.schedule': 'exponential',
                     'optimizer.learning_rate': 1e-3,
                     'optimizer.transition_steps': 10,
                     'optimizer.decay_rate': 0.5})
  steps = [0, 9, 10, 19, 20, 35]
  np.testing.assert_allclose(
      _schedule_values(train.make_schedule(c), steps),
      [1e-3 * 0.5 ** (s // 10) for s in steps], rtol=1e-6)


def test_cosine_schedule_after_a_linear_warmup():
  c = tiny_config(**{'optimizer.schedule': 'cosine',
                     'optimizer.learning_rate': 2e-3,
                     'optimizer.warmup_steps': 4, 'num_train_steps': 24})
  steps = [0, 1, 3, 4, 9, 14, 24]
  lr = 2e-3
  expected = [lr * s / 4 if s < 4 else
              lr * 0.5 * (1 + math.cos(math.pi * (s - 4) / 20))
              for s in steps]
  np.testing.assert_allclose(
      _schedule_values(train.make_schedule(c), steps), expected, rtol=1e-5,
      atol=1e-12)


def test_constant_schedule():
  c = tiny_config(**{'optimizer.schedule': 'constant',
                     'optimizer.learning_rate': 3e-4})
  np.testing.assert_allclose(
      _schedule_values(train.make_schedule(c), [0, 5, 10_000]), 3e-4,
      rtol=1e-6)


def test_pareto_front_of_a_hand_made_set():
  bits_ = [100, 50, 200, 50, 400, 300, 800]
  psnr = [20.0, 18.0, 19.0, 17.0, 25.0, float('nan'), 24.0]
  # Sorted by bits: (50, 18) kept, (50, 17) beaten at equal bits, (100, 20)
  # kept, (200, 19) beaten, (300, nan) skipped, (400, 25) kept, (800, 24)
  # beaten.
  np.testing.assert_array_equal(viz.pareto_front(bits_, psnr, True),
                                [1, 0, 4])
  lpips = [0.3, 0.5, 0.2, 0.1, 0.25, 0.05, 0.01]
  # Lower is better: (50, 0.1) kept (best at 50), (100, 0.3) beaten, (200,
  # 0.2) beaten, (300, 0.05) kept, (400, 0.25) beaten, (800, 0.01) kept.
  np.testing.assert_array_equal(viz.pareto_front(bits_, lpips, False),
                                [3, 5, 6])


def test_radar_scores_by_hand():
  rows = [{'psnr': 20.0, 'lpips': 0.4, 'bits_per_image': 64, 'ssim': 0.5},
          {'psnr': 30.0, 'lpips': 0.1, 'bits_per_image': 1024, 'ssim': 0.5},
          {'psnr': 25.0, 'lpips': None, 'bits_per_image': 256,
           'ssim': 0.5}]
  scores = viz.radar_scores(rows, ('psnr', 'lpips', 'bits_per_image',
                                   'ssim'))
  expected = np.array([
      # psnr (higher better), lpips (lower), log2 bits (lower), ssim (equal)
      [0.0, 0.0, 1.0, 1.0],
      [1.0, 1.0, 0.0, 1.0],
      [0.5, np.nan, 0.5, 1.0]])
  np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_collections_stats_report_the_basis_error():
  c = tiny_config()
  model = train.create_model(c)
  tx, _ = train.make_optimizer(c)
  state = jax.jit(train.make_init_fn(model, tx, c))(jax.random.PRNGKey(0))
  collections = train_state.collections_of(state)
  basis = np.asarray(collections['pca']['bottleneck']['basis'])
  # A 1e-3 stretch of column 0 of location 5: |C^T C - I| peaks at
  # (1 + 1e-3)^2 - 1 on the diagonal.
  bent = basis.copy()
  bent[5, :, 0] *= 1.001
  bent_state = dict(state)
  bent_state[train_state.COLLECTIONS] = {
      **collections, 'pca': {'bottleneck': {
          **collections['pca']['bottleneck'], 'basis': jnp.asarray(bent)}}}
  stats = train.collections_stats(bent_state, configlib.make_bottleneck(c))
  gram = np.einsum('ldq,ldk->lqk', bent.astype(np.float64),
                   bent.astype(np.float64))
  expected = np.max(np.abs(gram - np.eye(gram.shape[-1])))
  assert expected == pytest.approx(1.001 ** 2 - 1, rel=1e-3)
  assert stats['pca/orthonormality_error'] == pytest.approx(expected,
                                                            rel=1e-3)


@pytest.mark.parametrize('arg,tokens', [('runlocal', 8 * 8),
                                        ('runlocal,setting=global', 1)])
def test_tokens_and_nominal_bits(arg, tokens):
  """Latent locations per image: (R / 2^levels)^2, 1 in global mode; and
  the nominal bits `tokens * Q * b` they make."""
  c = tiny_config('pcavae', arg)
  c.resolution = 32  # two downsamplings: 8 x 8 locations
  c.model.bottleneck.coefficient_bits = 3
  if c.model.bottleneck.mode == 'global':
    c.model.bottleneck.global_dim = 16
  assert bits.num_tokens(c) == tokens
  assert bits.latent_bits(c) == tokens * 4 * 3


def test_sweep_budgets_are_the_baselines_bit_counts():
  """The quick sweep's water-filling budgets: each baseline's tokens x bits
  per token (ceil), those within 2 % of a smaller one merged."""
  from pcavae import sweep  # pylint: disable=g-import-not-at-top
  cells = [sweep.parse_baseline(n) for n in sweep.SIZES['quick']['baselines']]
  # vq_4x4_k1024: 16 x 10; vq_8x8_k16: 64 x 4; fsq_8x8_l8555:
  # ceil(64 log2 1000) = 638, which absorbs vq/simvq_8x8_k1024's 64 x 10;
  # kl_8x8_c4: 64 x 4 x 32.
  assert math.ceil(64 * math.log2(1000)) == 638
  assert sweep.auto_budgets(cells, 'quick') == [160, 256, 638, 8192]


def test_sweep_settings_of_a_pca_cell():
  """pca_8x8_q50 (quick): Q = 16 of D = 32 on 8 x 8 locations, 1024
  coefficients, so budgets up to 1024 x 16 bits are kept."""
  from pcavae import sweep  # pylint: disable=g-import-not-at-top
  cell = sweep.cellby_name('pca_8x8_q50', 'quick')
  config = sweep.cell_config(cell, 'quick')
  assert config.model.bottleneck.num_components == 16
  settings = sweep.settings_for(cell, config, (32, 4), (100, 16384, 16385))
  assert settings == [
      {'setting': 'float32', 'kind': 'pca_float', 'coefficient_bits': 32},
      {'setting': 'b4', 'kind': 'pca_fixed', 'coefficient_bits': 4},
      {'setting': 'wf100', 'kind': 'pca_waterfill',
       'coefficient_bit_budget': 100},
      {'setting': 'wf16384', 'kind': 'pca_waterfill',
       'coefficient_bit_budget': 16384}]


def test_markdown_table_and_missing_values():
  from pcavae import harness  # pylint: disable=g-import-not-at-top
  rows = [['PCA', harness.fmt(27.1234, '.2f'), harness.fmt(None, '.2f')],
          ['VQ', harness.fmt(25.0, '.2f'), harness.fmt(0.31, '.3f')]]
  assert harness.markdown_table(['model', 'PSNR', 'LPIPS'], rows) == [
      '| model | PSNR | LPIPS |',
      '|---|---:|---:|',
      '| PCA | 27.12 | - |',
      '| VQ | 25.00 | 0.310 |']
