"""The evaluator units: `config.eval.units` chooses which run, and a subset
yields exactly its own metrics and images."""

import copy

import jax
import numpy as np
import pytest
from skimage import metrics as skimage_metrics

from conftest import tiny_config
from pcavae import configlib
from pcavae import data
from pcavae import evaluators
from pcavae import sharding
from pcavae import train
from pcavae import train_state

PCA_FIDELITY = ('captured_variance', 'captured_variance_min',
                'order_spearman', 'eigenvector_alignment',
                'identifiable_components')


@pytest.fixture(scope='module')
def untrained():
  """`(config, mesh, model, state)` of an untrained tiny PCA-VAE."""
  config = tiny_config(**{'eval.lpips': False})
  mesh = sharding.make_mesh(config)
  model = train.create_model(config, mesh)
  tx, _ = train.make_optimizer(config)
  state = jax.jit(train.make_init_fn(model, tx, config))(
      jax.random.PRNGKey(0))
  return config, mesh, model, state


def _evaluate(untrained, workdir, units):
  """`(scalars, images)` of the untrained model's eval under `units`."""
  config, mesh, model, state = untrained
  config = copy.deepcopy(config)
  config.eval.units = units
  configlib.validate(config)
  evaluator = evaluators.Evaluator(model, config, mesh, str(workdir))
  splits = data.get_splits(config.dataset, config.resolution)
  return evaluator(state, splits.eval, 0)


def _first_eval_images(config, n):
  """The first n eval images in the model's [-1, 1] range."""
  source = data.get_splits(config.dataset, config.resolution).eval
  images = np.stack([source[i] for i in range(n)]).astype(np.float32)
  return images * np.float32(1 / 127.5) - np.float32(1)


def _assert_summary(scalars, name, s):
  """erank, participation ratio and 99 %-variance dimension of spectrum s,
  from their closed forms."""
  assert s.sum() > 0
  p = s / s.sum()
  p = p[p > 0]
  v = np.square(s)
  np.testing.assert_allclose(scalars[f'spectra/{name}/erank'],
                             np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
  np.testing.assert_allclose(scalars[f'spectra/{name}/pr'],
                             v.sum() ** 2 / np.sum(v ** 2), rtol=1e-4)
  dim99 = int(np.searchsorted(np.cumsum(v) / v.sum(), 0.99) + 1)
  assert scalars[f'spectra/{name}/dim99'] == dim99


def test_the_unit_names_are_the_registry():
  assert tuple(evaluators.UNITS) == configlib.EVAL_UNITS
  assert configlib.eval_units(tiny_config()) == configlib.EVAL_UNITS


def test_a_subset_of_units_yields_exactly_their_metrics(untrained, tmp_path):
  scalars, images = _evaluate(untrained, tmp_path, ('codes', 'spectra'))
  spectra = {f'spectra/{name}/{k}' for name in ('z_e', 'z_q', 'pca_coef')
             for k in ('erank', 'pr', 'dim99')}
  assert set(scalars) == (
      {'eval/bits_per_image', 'eval/seconds', 'eval/seconds_spectra',
       'eval/seconds_pca_fidelity'} | spectra
      | {f'pca/{k}' for k in PCA_FIDELITY})
  assert set(images) == {'spectra', 'pca_fidelity'}
  config, _, model, state = untrained
  variables = train_state.variables_of(state)
  eval_images = _first_eval_images(config, config.eval.num_examples)
  _, aux = model.apply(variables, eval_images, train=False)
  tokens, q = int(np.prod(aux['coefficients'].shape[1:-1])), 4
  assert scalars['eval/bits_per_image'] == tokens * q * 32  # float32 coefs
  # The spectra of the first spectra_num_images eval images' encoder
  # outputs, one vector per location, and of the running coefficient sds.
  spectra_images = _first_eval_images(config, config.eval.spectra_num_images)
  z_e = model.apply(variables, spectra_images, method=model.encode)
  z_q, _ = model.apply(variables, z_e, False, method=model.quantize)
  saved = np.load(tmp_path / 'spectra' / 'step_0000000.npz')
  for name, z in (('z_e', z_e), ('z_q', z_q)):
    z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    np.testing.assert_allclose(saved[name], s, rtol=1e-4, atol=1e-6)
    _assert_summary(scalars, name, s)
  # Untrained, the running coefficient variances are 0: an all-zero
  # spectrum, whose measures are 0.
  np.testing.assert_array_equal(saved['pca_coef'], np.zeros(q))
  assert [scalars[f'spectra/pca_coef/{k}'] for k in ('erank', 'pr', 'dim99')
          ] == [0, 0, 0]

  scalars, images = _evaluate(untrained, tmp_path / 'r',
                              ('reconstruction',))
  assert set(scalars) == {'eval/psnr', 'eval/ssim', 'eval/num_images',
                          'eval/seconds_recon', 'eval/seconds'}
  assert set(images) == {'reconstructions'}
  assert not (tmp_path / 'r' / 'spectra').exists()
  # PSNR and SSIM of each of the first num_examples eval images in [0, 1],
  # averaged.
  assert scalars['eval/num_images'] == config.eval.num_examples == 16
  recon, _ = model.apply(variables, eval_images, train=False)
  x = np.clip((np.asarray(eval_images, np.float64) + 1) / 2, 0, 1)
  y = np.clip((np.asarray(recon, np.float64) + 1) / 2, 0, 1)
  mse = np.mean(np.square(x - y), axis=(1, 2, 3))
  np.testing.assert_allclose(scalars['eval/psnr'],
                             np.mean(10 * np.log10(1 / mse)), rtol=1e-5)
  ssim = [skimage_metrics.structural_similarity(
      a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)]
  np.testing.assert_allclose(scalars['eval/ssim'], np.mean(ssim), atol=1e-4)

  assert _evaluate(untrained, tmp_path / 'none', ()) == ({}, {})


@pytest.mark.parametrize('units,match', [
    (('reconstruction', 'psnr'), "unknown evaluator 'psnr'"),
    (('codes', 'codes'), 'twice'),
])
def test_bad_units_are_rejected_naming_the_key(units, match):
  config = tiny_config(**{'eval.units': units})
  with pytest.raises(ValueError, match=r'config\.eval\.units') as e:
    configlib.validate(config)
  assert match in str(e.value)
