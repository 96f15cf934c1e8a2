"""Config checks that run before any compute, and config (de)serialisation.

Every error names the offending key as it is written on the command line
(`config.model.bottleneck.num_components`), so a typo in a launch script
fails in a second rather than after compilation.
"""

import dataclasses
import importlib.util
import json
import os
import typing
from typing import Any, Dict, Tuple

import ml_collections
from ml_collections import config_dict

from pcavae import checks
from pcavae import data
from pcavae import losses
from pcavae.models import bottlenecks
from pcavae.models import discriminator

_POSITIVE_INTS = ('batch_size', 'num_train_steps', 'log_every_steps',
                  'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'resolution')
COMPUTE_DTYPES = ('float32', 'bfloat16')
SCHEDULES = ('exponential', 'cosine', 'constant')
CONV_ALGORITHMS = ('auto', 'direct', 'winograd')
RECONSTRUCTION_LOSSES = losses.RECONSTRUCTION_CHOICES
# The evaluators `config.eval.units` may list (pcavae/evaluators.py, which
# maps each name to its class); a saved config without the key ran them all.
EVAL_UNITS = ('reconstruction', 'codes', 'rfid', 'spectra')


# Keys of `config.model.bottleneck` that configure the trainer's AE warm-up
# (pcavae/warmup.py), not the bottleneck module: not constructor arguments.
WARMUP_KEYS = ('warmup_steps', 'warmup_kmeans_batches', 'warmup_kmeans_iters',
               'warmup_auto', 'warmup_auto_every', 'warmup_auto_patience',
               'warmup_auto_tolerance')
# Their defaults when a config leaves them out.
DEFAULT_KMEANS_BATCHES = 10
DEFAULT_KMEANS_ITERS = 20
DEFAULT_AUTO_EVERY = 50
DEFAULT_AUTO_PATIENCE = 3
DEFAULT_AUTO_TOLERANCE = 0.05
# Arguments of a bottleneck that come from the mesh (train.create_model),
# not from a config.
RUNTIME_ARGUMENTS = ('sample_sharding',)


def bottleneck_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The bottleneck's constructor arguments: every key but `kind` and the
  warm-up keys."""
  kw = dict(config.model.bottleneck.to_dict())
  kw.pop('kind')
  for key in WARMUP_KEYS:
    kw.pop(key, None)
  return kw


def bottleneck_defaults(kind: str) -> Dict[str, Any]:
  """The constructor defaults of bottleneck `kind` as config values: the one
  source of a config's defaults for its keys. A None default of an
  `Optional[T]` argument becomes a typed placeholder, so that
  `--config.model.bottleneck.<key>=` can set it; arguments without a
  default (e.g. the PCA's `num_components`) are left to the config."""
  cls = bottlenecks.get(kind)
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if (f.name in ('parent', 'name') + RUNTIME_ARGUMENTS
        or f.default is dataclasses.MISSING):
      continue
    value = f.default
    if value is None:
      types = [t for t in typing.get_args(hints.get(f.name))
               if t is not type(None)]
      value = config_dict.placeholder(types[0]) if types else None
    out[f.name] = value
  return out


def make_bottleneck(config: ml_collections.ConfigDict
                    ) -> bottlenecks.Bottleneck:
  """The configured bottleneck module (unbound: its facts, not its state).

  Raises ValueError naming the key for an unknown kind or argument, or a
  required argument left out.
  """
  kind = config.model.bottleneck.get('kind')
  cls = bottlenecks.get(kind)  # names the key on an unknown kind
  fields = {f.name: f for f in dataclasses.fields(cls)
            if f.name not in ('parent', 'name') + RUNTIME_ARGUMENTS}
  kwargs = bottleneck_kwargs(config)
  for key in kwargs:
    if key not in fields:
      raise ValueError(f'config.model.bottleneck.{key} is not an argument of '
                       f'the {kind!r} bottleneck; it takes {sorted(fields)}.')
  for key, field in fields.items():
    if (key not in kwargs and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING):
      raise ValueError(f'config.model.bottleneck.{key} must be set for the '
                       f'{kind!r} bottleneck.')
  return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class WarmupSettings:
  """The AE warm-up keys of `config.model.bottleneck` (pcavae/warmup.py),
  read once, each with its one default.

  Attributes:
    steps: N (0: no warm-up, the quantizer is on from the start); with
      `auto` the latest step of the adaptive switch (the cap).
    kmeans_batches: batches of latents collected for the switch's init.
    kmeans_iters: Lloyd iterations of a k-means init.
    auto: whether the adaptive criterion decides the switch step.
    auto_every: steps between its checks.
    auto_patience: checks in its window.
    auto_tolerance: its threshold on the spread of log-variances.
  """
  steps: int = 0
  kmeans_batches: int = DEFAULT_KMEANS_BATCHES
  kmeans_iters: int = DEFAULT_KMEANS_ITERS
  auto: bool = False
  auto_every: int = DEFAULT_AUTO_EVERY
  auto_patience: int = DEFAULT_AUTO_PATIENCE
  auto_tolerance: float = DEFAULT_AUTO_TOLERANCE

  @property
  def enabled(self) -> bool:
    return self.steps > 0

  @property
  def adaptive(self) -> bool:
    """Whether the switch step is decided by the criterion."""
    return self.enabled and self.auto


def warmup_settings(config: ml_collections.ConfigDict) -> WarmupSettings:
  """The raw warm-up keys of `config`, absent ones at their defaults (not
  validated: `validate` checks them)."""
  b = config.model.bottleneck
  given = {f.name: b.get('warmup_' + f.name)
           for f in dataclasses.fields(WarmupSettings)}
  return WarmupSettings(**{k: v for k, v in given.items() if v is not None})


def warmup_steps(config: ml_collections.ConfigDict) -> int:
  """N of the AE warm-up (`WarmupSettings.steps`)."""
  return int(warmup_settings(config).steps or 0)


def latent_shape(config: ml_collections.ConfigDict):
  """`(h, w, D)` of the encoder output."""
  r = config.resolution // (2 ** len(config.model.channels))
  return (r, r, config.model.latent_dim)


def eval_units(config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """The names in `config.eval.units`, in order; raises ValueError naming
  the key on an unknown or repeated name."""
  units = config.eval.get('units', EVAL_UNITS)
  if isinstance(units, str) or not isinstance(units, (list, tuple)):
    raise ValueError(f'config.eval.units={units!r} must be a list of '
                     f'evaluator names from {EVAL_UNITS}.')
  for name in units:
    if name not in EVAL_UNITS:
      raise ValueError(f'config.eval.units: unknown evaluator {name!r}; '
                       f'choose from {EVAL_UNITS}.')
  if len(set(units)) < len(units):
    raise ValueError(f'config.eval.units={tuple(units)!r} names an evaluator '
                     'twice.')
  return tuple(units)


def validate(config: ml_collections.ConfigDict) -> bottlenecks.Bottleneck:
  """Raises ValueError naming the first bad key of `config`; returns its
  bottleneck (`make_bottleneck`), validated, for the run to use."""
  for key in _POSITIVE_INTS:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f'config.{key}={value!r} must be a positive integer.')
  data.pipeline.check_workers(config.get('data_workers', 0))
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
  if config.model.get('conv_algorithm', 'auto') not in CONV_ALGORITHMS:
    raise ValueError(
        f'config.model.conv_algorithm={config.model.conv_algorithm!r}; choose '
        f'one of {CONV_ALGORITHMS}.')
  if config.model.latent_dim <= 0:
    raise ValueError(f'config.model.latent_dim={config.model.latent_dim!r} '
                     'must be positive.')

  bottleneck = make_bottleneck(config)
  bottleneck.validate(latent_shape(config))
  _validate_warmup(config, bottleneck)
  _validate_loss(config)

  eval_units(config)
  data.validate_dataset_config(config.dataset, config.resolution)
  return bottleneck


def _validate_warmup(config: ml_collections.ConfigDict,
                     bottleneck: bottlenecks.Bottleneck) -> None:
  """The AE warm-up keys (pcavae/warmup.py)."""
  b = config.model.bottleneck
  key = 'config.model.bottleneck.'
  w = warmup_settings(config)
  n = w.steps
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f'{key}warmup_steps={n!r} must be an integer >= 0.')
  if not n:
    if w.auto:
      raise ValueError(
          f'{key}warmup_auto=True needs {key}warmup_steps > 0: the latest '
          'step at which the adaptive switch may happen (the cap).')
    return
  if not bottleneck.warmup_applies:
    raise ValueError(
        f'{key}warmup_steps={n}: AE warm-up needs a quantizing bottleneck or '
        f'pca ({bottlenecks.warmup_kinds()}), not {b.kind!r}.')
  bottleneck.check_warmup(f'{key}warmup_steps={n}')
  checks.positive(w.kmeans_batches, key + 'warmup_kmeans_batches')
  iters = w.kmeans_iters
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
    raise ValueError(f'{key}warmup_kmeans_iters={iters!r} must be an integer '
                     '>= 0.')
  _validate_warmup_auto(config, bottleneck, w)


def _validate_warmup_auto(config: ml_collections.ConfigDict,
                          bottleneck: bottlenecks.Bottleneck,
                          w: WarmupSettings) -> None:
  """The adaptive switch's keys (pcavae/warmup.py), warm-up being on."""
  b = config.model.bottleneck
  key = 'config.model.bottleneck.'
  auto = w.auto
  if not isinstance(auto, bool):
    raise ValueError(f'{key}warmup_auto={auto!r} must be True or False.')
  if not auto:
    return
  if not bottleneck.num_codes:
    raise ValueError(
        f'{key}warmup_auto=True: the criterion water-fills at log2 K bits per '
        f'token and needs a quantizer with K codes, not {b.kind!r}.')
  checks.positive(w.auto_every, key + 'warmup_auto_every')
  checks.positive(w.auto_patience, key + 'warmup_auto_patience')
  tol = w.auto_tolerance
  if (isinstance(tol, bool) or not isinstance(tol, (int, float))
      or not tol >= 0):
    raise ValueError(f'{key}warmup_auto_tolerance={tol!r} must be a number '
                     '>= 0 (a change of log-variance).')


LOSS_KINDS = ('reconstruction', 'vqgan')


def _validate_loss(config: ml_collections.ConfigDict) -> None:
  """The VQGAN objective's keys, when it is on."""
  lc = config.loss
  kind = lc.get('kind', 'reconstruction')
  if kind not in LOSS_KINDS:
    raise ValueError(f'config.loss.kind={kind!r}; choose one of {LOSS_KINDS}.')
  norm = lc.get('kl_normalization', 'ldm')
  if norm not in losses.KL_NORMALIZATIONS:
    raise ValueError(f'config.loss.kl_normalization={norm!r}; choose one of '
                     f'{losses.KL_NORMALIZATIONS}.')
  if kind != 'vqgan':
    return
  for name in ('perceptual_weight', 'disc_weight', 'disc_factor', 'disc_start'):
    if not (isinstance(lc.get(name), (int, float)) and lc[name] >= 0):
      raise ValueError(f'config.loss.{name}={lc.get(name)!r} must be >= 0.')
  for name in ('disc_lr', 'adaptive_weight_max'):
    checks.positive(lc.get(name), f'config.loss.{name}', float)
  for name in ('disc_layers', 'disc_filters'):
    checks.positive(lc.get(name), f'config.loss.{name}')
  if lc.disc_norm not in discriminator.NORMS:
    raise ValueError(f'config.loss.disc_norm={lc.disc_norm!r}; choose one of '
                     f'{discriminator.NORMS}.')
  need = discriminator.min_resolution(lc.disc_layers)
  if config.resolution < need:
    raise ValueError(
        f'config.loss.disc_layers={lc.disc_layers} needs images of at least '
        f'{need} px (config.resolution={config.resolution}).')
  if lc.perceptual_weight:
    net = lc.perceptual_net
    min_size = {'alex': 31, 'vgg': 16}.get(net)
    if min_size is None:
      raise ValueError(f'config.loss.perceptual_net={net!r}; choose alex | '
                       'vgg.')
    if config.resolution < min_size:
      raise ValueError(
          f'config.loss.perceptual_net={net!r} (LPIPS) needs images of at '
          f'least {min_size} px (config.resolution={config.resolution}); use '
          'vgg or set config.loss.perceptual_weight=0.')


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` as `--config=` does (for notebooks,
  experiments and tests): by path, under a module name of its own, since a
  config file's name may be a package's (`configs/pcavae.py`)."""
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
                  'skip_nonfinite_steps', 'eval.', 'mesh.',
                  # The train stream is the same for any worker count.
                  'data_workers')


def eval_only_keys(config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """The bottleneck keys of `config` that change only its eval
  (`Bottleneck.eval_only_keys`, e.g. the PCA's coefficient quantization):
  resumable too. None for an unknown kind (validation names it)."""
  kind = config.model.bottleneck.get('kind')
  try:
    cls = bottlenecks.get(kind)
  except ValueError:
    return ()
  return tuple('model.bottleneck.' + k for k in cls.eval_only_keys)


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


# Keys added after runs were made, with the value that reproduces what those
# runs did (or computes the same function): a saved config without the key
# matches a new one holding this value.
ADDED_KEY_DEFAULTS = {
    'model.conv_algorithm': 'auto',   # Winograd: the same convs to rounding
    # The adaptive AE warm-up switch (off: the fixed warmup_steps).
    'model.bottleneck.warmup_auto': False,
    'model.bottleneck.warmup_auto_every': DEFAULT_AUTO_EVERY,
    'model.bottleneck.warmup_auto_patience': DEFAULT_AUTO_PATIENCE,
    'model.bottleneck.warmup_auto_tolerance': DEFAULT_AUTO_TOLERANCE,
    # Runs before the PCA trackers existed used the OPCA-VAE rule; the
    # subspace tracker's keys do nothing for the others.
    'model.bottleneck.tracker': 'reference',
    'model.bottleneck.covariance_alpha': 0.99,
    'model.bottleneck.subspace_iterations': 1,
    # Runs saved without the key re-orthonormalised symmetrically.
    'model.bottleneck.orthonormalization': 'symmetric',
    'data_workers': 0,
    # PCA keys the configs took at the layer's default before they listed
    # every key (`bottleneck_defaults`).
    'model.bottleneck.variance_alpha': 0.99,
    'model.bottleneck.orthonormality_tolerance': 1e-2,
    'model.bottleneck.orthonormality_check_every': 16,
}


def _resolved(flat: Dict[str, Any]) -> Dict[str, Any]:
  """`flat` as it acts: `loss.reconstruction='auto'` resolved against the
  objective, and the discriminator's keys dropped when there is none. So a
  run saved with `'mse'` under the plain objective resumes under today's
  `'auto'`, which means the same loss."""
  flat = dict(flat)
  kind = flat.get('loss.kind', 'reconstruction')
  if flat.get('loss.reconstruction') == 'auto':
    flat['loss.reconstruction'] = losses.reconstruction_name('auto', kind)
  if kind != 'vqgan':
    # The discriminator's keys do nothing under the plain objective (runlocal's
    # disc_start changed from 10000 to a third of the run).
    flat = {k: v for k, v in flat.items() if not k.startswith('loss.disc_')}
  return flat


def differences(saved: Any, new: Any, ignore=None):
  """`[(key, saved value, new value)]` for keys that differ, minus `ignore`
  (default: `RESUMABLE_KEYS` and the new config's `eval_only_keys`) and
  minus keys of `ADDED_KEY_DEFAULTS` absent from `saved` and at their
  default in `new`."""
  if ignore is None:
    ignore = RESUMABLE_KEYS + eval_only_keys(new)
  a, b = _resolved(flatten(saved)), _resolved(flatten(new))
  out = []
  for key in sorted(set(a) | set(b)):
    if any(key == i or (i.endswith('.') and key.startswith(i))
           for i in ignore):
      continue
    if (key not in a and key in ADDED_KEY_DEFAULTS
        and b.get(key) == ADDED_KEY_DEFAULTS[key]):
      continue
    if a.get(key, '<absent>') != b.get(key, '<absent>'):
      out.append((key, a.get(key, '<absent>'), b.get(key, '<absent>')))
  return out


def shrink_for_smoke_run(config: ml_collections.ConfigDict, steps: int
                         ) -> ml_collections.ConfigDict:
  """A `runlocal` config cut down to a seconds-long smoke run, in place.

  The experiments' `--quick` modes (run by tests/test_experiments.py): 16 px
  images, channels (8, 16), one residual layer, batch 8, `steps` train
  steps with one eval at the end over 16 images, no LPIPS or TensorBoard.
  The latent dimension and the bottleneck keys are kept, so every family's
  config stays valid and its bits per token unchanged.

  Returns:
    `config`, for chaining.
  """
  config.resolution = 16
  config.batch_size = 8
  config.num_train_steps = steps
  config.log_every_steps = steps
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.model.channels = (8, 16)
  config.model.num_res_layers = 1
  config.eval.batch_size = 8
  config.eval.num_examples = 16
  config.eval.grid_size = 4
  config.eval.spectra_num_images = 16
  config.eval.lpips = False
  config.tensorboard = False
  return config
