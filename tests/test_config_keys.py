"""Every config key can be set from the command line: no bare None defaults
(ml_collections refuses to override a NoneType field), typed placeholders
instead, set through the same `config_flags` that `pcavae.main` uses."""

import glob
import os

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags
import pytest

from conftest import ROOT
from pcavae import configlib

PCAVAE_SETTINGS = ('spatial16', 'spatial4', 'global', 'shared')


def _specs():
  """Every config file, bare and `runlocal`, and each pcavae `setting=`."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    name = os.path.basename(path)
    if name in ('common.py', '__init__.py'):
      continue
    out += [path, path + ':runlocal']
    if name == 'pcavae.py':
      for s in PCAVAE_SETTINGS:
        out += [f'{path}:setting={s}', f'{path}:setting={s},runlocal']
  return out


def _leaves(c: config_dict.ConfigDict, prefix: str = ''):
  """`(key, raw field)`: a FieldReference stays one (not resolved)."""
  for key in c.keys():
    field = c._fields[key]  # pylint: disable=protected-access
    if isinstance(field, config_dict.ConfigDict):
      yield from _leaves(field, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', field


def test_the_walk_sees_placeholders_and_bare_nones():
  c = config_dict.ConfigDict({'a': None, 'b': {'c': config_dict.placeholder(
      float)}})
  leaves = dict(_leaves(c))
  assert leaves['a'] is None
  assert isinstance(leaves['b.c'], config_dict.FieldReference)


@pytest.mark.parametrize('spec', _specs(),
                         ids=lambda s: os.path.basename(s))
def test_no_config_key_is_a_bare_none(spec):
  config = configlib.load(spec)
  bare = [k for k, v in _leaves(config) if v is None]
  assert not bare, (f'{os.path.basename(spec)}: bare None keys {bare} cannot '
                    'be set by --config.<key>=; use config_dict.placeholder.')


def _parse(args):
  """Parses `--config=...` and overrides as `pcavae.main` would."""
  argv = ['prog'] + args
  values = flags.FlagValues()
  # `sys_argv`: config_flags finds the overrides to define in argv.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=False, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize('spec,key,text,expected', [
    ('pcavae.py:runlocal', 'model.bottleneck.learning_rate', '0.1', 0.1),
    ('pcavae.py:runlocal', 'model.bottleneck.orthonormalize_every', '8', 8),
    ('pcavae.py:runlocal', 'model.bottleneck.global_dim', '64', 64),
    ('pcavae.py:setting=shared', 'model.bottleneck.max_update_norm', '0.5',
     0.5),
    ('pcavae.py', 'model.bottleneck.coefficient_bit_budget', '256', 256),
    ('ema_vq.py', 'model.bottleneck.dead_code_threshold', '0.03', 0.03),
    ('ae.py', 'dataset.path', '/data/x', '/data/x'),
    ('vqvae.py:runlocal', 'eval.units', "('reconstruction','codes')",
     ('reconstruction', 'codes')),
])
def test_placeholder_keys_can_be_set_by_flag(spec, key, text, expected):
  config = _parse([f'--config={os.path.join(ROOT, "configs", spec)}',
                   f'--config.{key}={text}'])
  node = config
  for part in key.split('.'):
    node = node[part]
  assert node == expected and type(node) is type(expected)


def test_unset_placeholders_still_read_as_none():
  """Code that tests `is None` (tied Hebbian rate, no restarts) still sees
  None, and the bottleneck gets None as its constructor argument."""
  # The `reference` rule leaves the rate tied and the orthonormalisation
  # period at its default (the `sanger` default sets both).
  c = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') +
                     ':setting=shared,reference')
  b = c.model.bottleneck
  assert b.learning_rate is None and b.get('global_dim') is None
  assert b.max_update_norm is None and b.orthonormalize_every is None
  kwargs = configlib.bottleneck_kwargs(c)
  assert kwargs['learning_rate'] is None and kwargs['max_update_norm'] is None
  e = configlib.load(os.path.join(ROOT, 'configs', 'ema_vq.py'))
  assert configlib.bottleneck_kwargs(e)['dead_code_threshold'] is None
