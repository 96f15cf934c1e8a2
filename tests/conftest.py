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


@pytest.fixture
def shared_dir():
  return SHARED
