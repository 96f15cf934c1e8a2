"""Latent interpolation (`pcavae.traversal.interpolate_pairs`,
`path_smoothness`, `interpolation_study`) on tiny trained runs."""

import jax
import numpy as np
import pytest

from pcavae import train
from pcavae import traversal
from pcavae import viz


def _sq(x, y):
  """Mean squared difference per image: a squared distance (as LPIPS is)
  with closed forms; its root is the RMS difference."""
  return np.mean(np.square(np.asarray(x) - np.asarray(y)), axis=(1, 2, 3))


def _ramp(values):
  """Frames `(1, T, 2, 2, 3)` with every pixel equal to `values[t]`."""
  v = np.asarray(values, np.float32)
  return np.broadcast_to(v[None, :, None, None, None], (1, len(v), 2, 2, 3))


def test_path_smoothness_closed_forms():
  """An even ramp: every step (1/(T-1))^2, evenness 1, detour 1. A jump at
  one step: evenness T - 1. A there-and-back path: detour = length / end,
  in square-root units, where the triangle inequality holds."""
  t = 9
  even = traversal.path_smoothness(_sq, _ramp(np.linspace(0, 1, t)))
  assert even['lpips_step_mean'] == pytest.approx(1 / (t - 1) ** 2)
  assert even['evenness'] == pytest.approx(1.0)
  assert even['detour'] == pytest.approx(1.0)
  assert even['path_length'] == pytest.approx(1.0)
  assert even['endpoint_distance'] == pytest.approx(1.0)
  assert even['num_pairs'] == 1
  jump = traversal.path_smoothness(_sq, _ramp([0] * 4 + [1] * 5))
  assert jump['evenness'] == pytest.approx(t - 1)
  assert jump['lpips_step_max'] == pytest.approx(1.0)
  assert jump['detour'] == pytest.approx(1.0)
  back = traversal.path_smoothness(_sq, _ramp([0, 0.5, 1.0, 0.5, 0.75]))
  # Root steps 0.5, 0.5, 0.5, 0.25: length 1.75 for an end distance of 0.75.
  assert back['lpips_step_mean'] == pytest.approx((3 * 0.25 + 0.0625) / 4)
  assert back['path_length'] == pytest.approx(1.75)
  assert back['detour'] == pytest.approx(1.75 / 0.75)
  assert back['evenness'] == pytest.approx(0.5 / (1.75 / 4))
  # Two paths: each statistic is averaged over them.
  both = traversal.path_smoothness(
      _sq, np.concatenate([_ramp(np.linspace(0, 1, t)),
                           _ramp([0] * 4 + [1] * 5)]))
  assert both['evenness'] == pytest.approx((1 + t - 1) / 2)
  assert both['num_pairs'] == 2


def _pairs(config, n=2, seed=0):
  r = config.resolution
  return np.random.default_rng(seed).uniform(-1, 1, (n, 2, r, r, 3)).astype(
      np.float32)


def test_pca_interpolation_is_the_coefficient_line(codec_pca_workdir):
  """The PCA's eval output is affine in the encoder output, so frame t
  decodes `(1 - t) z_q(a) + t z_q(b)` with z_q each image's own eval latent
  (from the plain forward pass): a straight line between the two
  coefficient vectors, ends the two reconstructions."""
  config, model, variables, _ = train.restore_model(codec_pca_workdir)
  pairs = _pairs(config)
  steps = 5
  frames = traversal.interpolate_pairs(model, variables, pairs, steps)
  assert frames.shape == (2, steps) + pairs.shape[2:]
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  decode = jax.jit(lambda v, z: model.apply(v, z,
                                            method=lambda m, z: m.decode(z)))
  recon_a, aux_a = forward(variables, pairs[:, 0])
  recon_b, aux_b = forward(variables, pairs[:, 1])
  np.testing.assert_allclose(frames[:, 0], recon_a, atol=1e-5)
  np.testing.assert_allclose(frames[:, -1], recon_b, atol=1e-5)
  za, zb = np.asarray(aux_a['z_q']), np.asarray(aux_b['z_q'])
  for k, t in enumerate(np.linspace(0, 1, steps)):
    mixed = ((1 - t) * za + t * zb).astype(np.float32)
    np.testing.assert_allclose(frames[:, k], decode(variables, mixed),
                               atol=1e-4, err_msg=f't = {t}')


def test_quantizer_interpolation_ends_and_errors(codec_fsq_workdir):
  """FSQ: the ends are the reconstructions, and bad shapes are refused."""
  config, model, variables, _ = train.restore_model(codec_fsq_workdir)
  pairs = _pairs(config, seed=1)
  frames = traversal.interpolate_pairs(model, variables, pairs, 2)
  recon = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  np.testing.assert_allclose(frames[:, 0], recon(variables, pairs[:, 0]),
                             atol=1e-5)
  np.testing.assert_allclose(frames[:, 1], recon(variables, pairs[:, 1]),
                             atol=1e-5)
  with pytest.raises(ValueError, match='pairs must be'):
    traversal.interpolate_pairs(model, variables, pairs[:, 0], 3)
  with pytest.raises(ValueError, match='num_steps'):
    traversal.interpolate_pairs(model, variables, pairs, 1)


def test_interpolation_study_with_lpips(codec_pca_workdir, codec_fsq_workdir):
  """Both runs on the same pairs with the real LPIPS: the numbers per run,
  zero distance for identical frames, a labelled figure."""
  runs = {}
  for label, workdir in (('pca', codec_pca_workdir),
                         ('fsq', codec_fsq_workdir)):
    config, model, variables, _ = train.restore_model(workdir)
    runs[label] = (model, variables)
  pairs = _pairs(config, n=3, seed=2)
  distance = traversal.lpips_distance(batch_size=4)
  same = distance(pairs[:, 0], pairs[:, 0])
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert np.all(distance(pairs[:, 0], pairs[:, 1]) > 0.01)
  figure, numbers = traversal.interpolation_study(runs, pairs, 4, distance,
                                                  figure_pairs=2, title='t')
  assert set(numbers) == {'pca', 'fsq'}
  for v in numbers.values():
    assert v['num_pairs'] == 3
    assert v['lpips_step_max'] >= v['lpips_step_mean'] >= 0
    assert v['evenness'] >= 1.0 - 1e-9
    # sqrt(LPIPS) is a Euclidean distance of scaled features.
    assert v['detour'] >= 1.0 - 1e-6
  # 2 pairs x 2 runs rows of 1 + 4 + 1 images, scaled up to >= 360 px.
  assert figure.dtype == np.uint8 and figure.ndim == 3
  assert figure.shape[0] >= 360


def test_labeled_rows_and_sample_grid():
  """The figure helpers: rows must agree in shape; the sample grid pads
  the last row with white."""
  rows = {'a': np.zeros((3, 8, 8, 3)), 'b': np.ones((3, 8, 8, 3))}
  fig = viz.labeled_rows(rows, column_labels=['x', 'y', 'z'], title='t')
  assert fig.dtype == np.uint8 and fig.shape[2] == 3
  grid = viz.sample_grid(-np.ones((5, 4, 4, 3), np.float32), per_row=4)
  assert grid.shape == (2 * 6 + 2, 4 * 6 + 2, 3)
  assert grid[2:6, 2:6].max() == 0          # the first sample (black)
  assert grid[8:12, 8:12].min() == 255       # a white filler
