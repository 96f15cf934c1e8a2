"""Dataset registry and grain pipelines (docs/design.md §4 "Data").

`get_splits(config.dataset, resolution)` returns random-access sources of uint8
`(R, R, 3)` images; `train_iterator` / `eval_batches` turn them into float32
batches in `[-1, 1]`, deterministic from `(seed, step)` and cut per process.

`config.dataset.name` picks one of `DATASETS`; the other keys of
`config.dataset` are that dataset's options (defaults in brackets):

* `photo_patches` (default; no download) -- crops of the photographs inside the
  scikit-image / scikit-learn / matplotlib wheels, split by photo
  (`pcavae.data.photo_patches`):
  `scales` [(0.125, 0.25, 0.5)] crop side as a fraction of a photo's shorter
  side; `stride_fraction` [0.5] grid stride as a fraction of R; `min_std` [2.0]
  drop near-constant crops.
* `fashion_mnist` -- idx files, 28x28 grey padded to 32x32 and tiled to RGB;
  eval = t10k (`pcavae.data.fashion_mnist`):
  `data_dir` [None: `$FASHION_MNIST_DIR`, then
  `/usr/share/datasets/fashion-mnist`, then TFDS]; `tfds_data_dir` [None].
* `image_folder` -- any folder of JPEG/PNG, sorted and split 75/10/15
  train/eval/test (`pcavae.data.image_folder`; test via
  `get_split(config, R, 'test')`): `path` [required].
* `tfds` -- a prepared TFDS image dataset, random access
  (`pcavae.data.tfds_dataset`): `tfds_name` [required, e.g. 'celeb_a_hq/256'];
  `data_dir` [None]; `train_split` ['train']; `eval_split` ['test'];
  `image_key` ['image'].

`default_config()` returns a `config.dataset` holding all of these keys.
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections

from pcavae.data import fashion_mnist
from pcavae.data import image_folder
from pcavae.data import photo_patches
from pcavae.data import tfds_dataset
from pcavae.data.pipeline import eval_batches
from pcavae.data.pipeline import to_float
from pcavae.data.pipeline import train_iterator
from pcavae.data.sources import Source
from pcavae.data.sources import Splits

__all__ = [
    'DATASETS', 'Source', 'Splits', 'clear_caches', 'default_config',
    'eval_batches', 'get_split', 'get_splits', 'to_float', 'train_iterator',
    'validate_dataset_config',
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ('photo_patches', 'fashion_mnist', 'image_folder',
                             'tfds')
DEFAULT_DATASET = 'photo_patches'

_MODULES = {
    'photo_patches': photo_patches,
    'fashion_mnist': fashion_mnist,
    'image_folder': image_folder,
    'tfds': tfds_dataset,
}
_ALL_KEYS = frozenset(['name']).union(*(m.DEFAULTS for m in _MODULES.values()))


def _name(dataset_config: Any) -> str:
  if dataset_config is None:
    raise ValueError('config.dataset is missing; it needs at least '
                     f'config.dataset.name, one of {DATASETS}.')
  name = dataset_config.get('name', None) if hasattr(
      dataset_config, 'get') else getattr(dataset_config, 'name', None)
  if name not in DATASETS:
    raise ValueError(f'config.dataset.name={name!r} is not a known dataset; '
                     f'choose one of {DATASETS}.')
  return name


def validate_dataset_config(dataset_config: Any, resolution: int) -> None:
  """Cheap checks before any compute.

  Checks the name, the resolution and the chosen dataset's keys (types, ranges,
  that a given folder exists); reads no images. Keys that no dataset knows are
  logged as a warning (they may belong to other code).

  Args:
    dataset_config: `config.dataset`.
    resolution: image side R.

  Raises:
    ValueError: naming the offending key, e.g. 'config.dataset.name'.
  """
  name = _name(dataset_config)
  if (isinstance(resolution, bool) or not isinstance(resolution, int)
      or resolution <= 0):
    raise ValueError(f'The image resolution must be a positive integer, got '
                     f'{resolution!r}.')
  module = _MODULES[name]
  module.validate(dataset_config, resolution)
  keys = dataset_config.keys() if hasattr(dataset_config, 'keys') else []
  unknown = sorted(set(keys) - _ALL_KEYS)
  if unknown:
    logger.warning('config.dataset has key(s) no dataset uses: %s (%s knows '
                   '%s).', unknown, name, sorted(module.DEFAULTS))


def default_config() -> ml_collections.ConfigDict:
  """`config.dataset` with every dataset's keys at their defaults.

  Path-like keys are typed placeholders (None until set), so that
  `--config.dataset.path=/data/x` works from the command line. Keys that the
  chosen dataset does not use are ignored.

  Returns:
    A ConfigDict with `name='photo_patches'`.
  """
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict({
      'name': DEFAULT_DATASET,
      # photo_patches
      'scales': photo_patches.DEFAULTS['scales'],
      'stride_fraction': photo_patches.DEFAULTS['stride_fraction'],
      'min_std': photo_patches.DEFAULTS['min_std'],
      # fashion_mnist (idx dir) and tfds (TFDS data dir)
      'data_dir': placeholder(str),
      'tfds_data_dir': placeholder(str),
      # image_folder
      'path': placeholder(str),
      # tfds
      'tfds_name': placeholder(str),
      'train_split': tfds_dataset.DEFAULTS['train_split'],
      'eval_split': tfds_dataset.DEFAULTS['eval_split'],
      'image_key': tfds_dataset.DEFAULTS['image_key'],
  })


def get_splits(dataset_config: Any, resolution: int) -> Splits:
  """Train and eval sources of the configured dataset at resolution R.

  Args:
    dataset_config: `config.dataset` (`name` plus that dataset's keys).
    resolution: image side R.

  Returns:
    `Splits(train, eval, info)`; sources yield uint8 `(R, R, 3)`; `info` has
    at least `name`, `num_train`, `num_eval`, `description`.

  Raises:
    ValueError: a bad key, or data that cannot be found (the message says where
      it looked and how to fix it).
  """
  validate_dataset_config(dataset_config, resolution)
  return _MODULES[_name(dataset_config)].get_splits(dataset_config, resolution)


def get_split(dataset_config: Any, resolution: int, split: str) -> Source:
  """One split by name: 'train', 'eval', or 'test' (image_folder only).

  Args:
    dataset_config: `config.dataset`.
    resolution: image side R.
    split: 'train', 'eval' or 'test'.

  Returns:
    The source of that split.

  Raises:
    ValueError: an unknown split, or 'test' for a dataset without one.
  """
  name = _name(dataset_config)
  if split == 'test':
    if name != 'image_folder':
      raise ValueError(f'Dataset {name!r} has no test split (only '
                       'image_folder does); use "eval".')
    validate_dataset_config(dataset_config, resolution)
    return image_folder.get_split(dataset_config, resolution, 'test')
  if split not in ('train', 'eval'):
    raise ValueError(f'Unknown split {split!r}; expected train, eval or test.')
  return getattr(get_splits(dataset_config, resolution), split)


def clear_caches() -> None:
  """Drops every per-process cache (photo crops, idx arrays, listings)."""
  photo_patches.clear_cache()
  fashion_mnist.read_idx_images.cache_clear()
  image_folder.clear_cache()
  tfds_dataset.clear_cache()
