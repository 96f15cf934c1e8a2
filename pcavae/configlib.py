"""Config checks that run before any compute, and config (de)serialisation.

Every error names the offending key as it is written on the command line
(`config.model.bottleneck.num_components`), so a typo in a launch script
fails in a second rather than after compilation.
"""

import dataclasses
import json
from typing import Any, Dict

import ml_collections

from pcavae import data
from pcavae.models import bottlenecks

_POSITIVE_INTS = ('batch_size', 'num_train_steps', 'log_every_steps',
                  'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'resolution')
COMPUTE_DTYPES = ('float32', 'bfloat16')
SCHEDULES = ('exponential', 'cosine', 'constant')
RECONSTRUCTION_LOSSES = ('mse', 'l1')


def bottleneck_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The bottleneck's constructor arguments: every key but `kind`."""
  kw = dict(config.model.bottleneck.to_dict())
  kw.pop('kind')
  return kw


def latent_shape(config: ml_collections.ConfigDict):
  """`(h, w, D)` of the encoder output."""
  r = config.resolution // (2 ** len(config.model.channels))
  return (r, r, config.model.latent_dim)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of `config`."""
  for key in _POSITIVE_INTS:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f'config.{key}={value!r} must be a positive integer.')
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'config.compute_dtype={config.compute_dtype!r}; choose '
                     f'one of {COMPUTE_DTYPES}.')
  if config.optimizer.schedule not in SCHEDULES:
    raise ValueError(f'config.optimizer.schedule={config.optimizer.schedule!r};'
                     f' choose one of {SCHEDULES}.')
  if not config.optimizer.learning_rate > 0:
    raise ValueError('config.optimizer.learning_rate must be > 0, got '
                     f'{config.optimizer.learning_rate!r}.')
  if config.loss.reconstruction not in RECONSTRUCTION_LOSSES:
    raise ValueError(f'config.loss.reconstruction={config.loss.reconstruction!r}'
                     f'; choose one of {RECONSTRUCTION_LOSSES}.')

  channels = tuple(config.model.channels)
  if not channels or any(int(c) <= 0 for c in channels):
    raise ValueError(f'config.model.channels={channels!r} must be a non-empty '
                     'list of positive integers.')
  factor = 2 ** len(channels)
  if config.resolution % factor:
    raise ValueError(
        f'config.resolution={config.resolution} is not divisible by the '
        f'downsampling factor {factor} (2 ** len(config.model.channels)).')
  if config.model.latent_dim <= 0:
    raise ValueError(f'config.model.latent_dim={config.model.latent_dim!r} '
                     'must be positive.')

  kind = config.model.bottleneck.get('kind')
  cls = bottlenecks.get(kind)  # names the key on an unknown kind
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  for key in bottleneck_kwargs(config):
    if key not in fields:
      raise ValueError(f'config.model.bottleneck.{key} is not an argument of '
                       f'the {kind!r} bottleneck; it takes {sorted(fields)}.')
  if kind == 'pca':
    _validate_pca(config)

  data.validate_dataset_config(config.dataset, config.resolution)


def _validate_pca(config: ml_collections.ConfigDict) -> None:
  b = config.model.bottleneck
  mode = b.get('mode', 'spatial')
  if mode not in bottlenecks.PCA_MODES:
    raise ValueError(f'config.model.bottleneck.mode={mode!r}; choose one of '
                     f'{bottlenecks.PCA_MODES}.')
  h, w, d = latent_shape(config)
  if mode == 'global':
    dim = b.get('global_dim') or h * w * d
    what = ('config.model.bottleneck.global_dim' if b.get('global_dim')
            else f'the flattened latent h*w*D = {h}*{w}*{d}')
  else:
    dim, what = d, 'config.model.latent_dim (D)'
  q = b.get('num_components')
  if not isinstance(q, int) or q <= 0:
    raise ValueError(f'config.model.bottleneck.num_components={q!r} must be a '
                     'positive integer.')
  if q > dim:
    raise ValueError(f'config.model.bottleneck.num_components={q} (Q) exceeds '
                     f'{what} = {dim}; Q <= D is required.')


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` as `--config=` does (for notebooks,
  experiments and tests; a config file's name may shadow a package, e.g.
  `configs/pcavae.py`, so it is loaded by path, not imported by name)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path!r} not found.')
  name = 'pcavae_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# Keys that may change between a run and its resumption without changing
# what is being trained (prefixes match nested keys).
RESUMABLE_KEYS = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps', 'keep_checkpoints', 'tensorboard',
                  'skip_nonfinite_steps', 'eval.', 'mesh.')


def flatten(tree: Any, prefix: str = '') -> Dict[str, Any]:
  """`{'a': {'b': 1}}` -> `{'a.b': 1}`; tuples become lists (as in JSON)."""
  if hasattr(tree, 'to_dict'):
    tree = tree.to_dict()
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'to_dict'):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = json.loads(json.dumps(v, default=str))
  return out


def differences(saved: Any, new: Any, ignore=RESUMABLE_KEYS):
  """`[(key, saved value, new value)]` for keys that differ, minus `ignore`."""
  a, b = flatten(saved), flatten(new)
  out = []
  for key in sorted(set(a) | set(b)):
    if any(key == i or (i.endswith('.') and key.startswith(i))
           for i in ignore):
      continue
    if a.get(key, '<absent>') != b.get(key, '<absent>'):
      out.append((key, a.get(key, '<absent>'), b.get(key, '<absent>')))
  return out
