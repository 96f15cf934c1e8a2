"""The evaluator units: `config.eval.units` chooses which run, and a subset
yields exactly its own metrics and images."""

import copy

import jax
import pytest

from conftest import tiny_config
from pcavae import configlib
from pcavae import data
from pcavae import evaluators
from pcavae import sharding
from pcavae import train

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
  assert (tmp_path / 'spectra' / 'step_0000000.npz').exists()

  scalars, images = _evaluate(untrained, tmp_path / 'r',
                              ('reconstruction',))
  assert set(scalars) == {'eval/psnr', 'eval/ssim', 'eval/num_images',
                          'eval/seconds_recon', 'eval/seconds'}
  assert set(images) == {'reconstructions'}
  assert not (tmp_path / 'r' / 'spectra').exists()

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
