"""`tfds`: any prepared TFDS image dataset, read with random access.

Uses `tfds.builder(...).as_data_source(split)` (the `array_record` or `parquet`
file formats; no TensorFlow needed to read). Nothing is downloaded or built
here: an unprepared dataset is an error that names the directory looked in and
the `tfds build` command to run. Images (`element[image_key]`, uint8 `(H, W, C)`
with C in {1, 3, 4}) are center-cropped to a square and resized (antialiased)
to R; grey images are tiled to RGB.

Keys (`config.dataset.*`):
  tfds_name: the dataset, optionally with config and version, e.g.
    `celeb_a_hq/256`; required.
  data_dir: TFDS data dir; default None (`$TFDS_DATA_DIR` or
    `~/tensorflow_datasets`).
  train_split: default 'train'. Sub-split syntax works (`'train[:90%]'`).
  eval_split: default 'test'.
  image_key: feature holding the image; default 'image'.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pcavae.data import sources

DEFAULTS = {
    'tfds_name': None,
    'data_dir': None,
    'train_split': 'train',
    'eval_split': 'test',
    'image_key': 'image',
}
_RANDOM_ACCESS_FORMATS = ('array_record', 'parquet')


def validate(config: Any, resolution: int) -> None:
  """Cheap checks of the `tfds` keys; raises ValueError naming one."""
  del resolution
  name = sources.config_get(config, 'tfds_name', None)
  if not name or not isinstance(name, str):
    raise ValueError('config.dataset.tfds_name must name a TFDS dataset (e.g. '
                     f'"celeb_a_hq/256") for config.dataset.name="tfds", got '
                     f'{name!r}.')
  for key in ('train_split', 'eval_split', 'image_key'):
    value = sources.config_get(config, key, DEFAULTS[key])
    if not value or not isinstance(value, str):
      raise ValueError(f'config.dataset.{key} must be a non-empty string, got '
                       f'{value!r}.')
  data_dir = sources.config_get(config, 'data_dir', None)
  if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
    raise ValueError(f'config.dataset.data_dir must be a path or None, got '
                     f'{data_dir!r}.')


def _build_command(name: str, data_dir: str | None) -> str:
  command = f'tfds build {name.split("/")[0]}'
  if '/' in name:
    config_name = name.split('/', 1)[1].split(':')[0]
    if config_name:
      command += f' --config={config_name}'
  command += ' --file_format=array_record'
  if data_dir:
    command += f' --data_dir={data_dir}'
  return command + ' [--manual_dir=DIR for datasets that need one]'


@functools.lru_cache(maxsize=8)
def _builder(name: str, data_dir: str | None):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError('config.dataset.name="tfds" needs tensorflow-datasets '
                     '(pip install tensorflow-datasets).') from e
  shown_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or (
      '~/tensorflow_datasets (the TFDS default)')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f'config.dataset.tfds_name={name!r}: no such registered TFDS dataset '
        f'and none prepared under {shown_dir}. Prepare it with: '
        f'{_build_command(name, data_dir)}') from e
  if not builder.is_prepared():
    raise ValueError(
        f'config.dataset.tfds_name={name!r} is not prepared: looked for '
        f'{builder.data_dir} (data_dir={shown_dir}). Prepare it with: '
        f'{_build_command(name, data_dir)}')
  file_format = builder.info.file_format
  file_format = str(getattr(file_format, 'value', file_format))
  if file_format not in _RANDOM_ACCESS_FORMATS:
    raise ValueError(
        f'config.dataset.tfds_name={name!r} at {builder.data_dir} is prepared '
        f'as {file_format}; random access needs one of '
        f'{_RANDOM_ACCESS_FORMATS}. Rebuild with: '
        f'{_build_command(name, data_dir)}')
  return builder


def _source(builder, split: str, key: str, image_key: str, resolution: int):
  try:
    data = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'config.dataset.{key}={split!r}: cannot open it for '
        f'{builder.name} (available splits: {sorted(builder.info.splits)}): '
        f'{e}') from e

  def to_image(element: Any):
    return sources.array_to_rgb(element[image_key], resolution)

  return sources.MappedSource(data, to_image, name=f'TfdsSource[{split}]')


def get_splits(config: Any, resolution: int) -> sources.Splits:
  """Train and eval data sources of a prepared TFDS dataset."""
  validate(config, resolution)
  name = sources.config_get(config, 'tfds_name')
  data_dir = sources.config_get(config, 'data_dir', None)
  data_dir = os.fspath(data_dir) if data_dir else None
  image_key = sources.config_get(config, 'image_key', DEFAULTS['image_key'])
  train_split = sources.config_get(config, 'train_split',
                                   DEFAULTS['train_split'])
  eval_split = sources.config_get(config, 'eval_split', DEFAULTS['eval_split'])
  builder = _builder(name, data_dir)
  features = builder.info.features
  if hasattr(features, 'keys') and image_key not in features.keys():
    raise ValueError(f'config.dataset.image_key={image_key!r} is not a feature '
                     f'of {name}; features: {sorted(features.keys())}.')
  train = _source(builder, train_split, 'train_split', image_key, resolution)
  evaluation = _source(builder, eval_split, 'eval_split', image_key,
                       resolution)
  info = {
      'name': 'tfds',
      'tfds_name': name,
      'data_dir': os.fspath(builder.data_dir),
      'num_train': len(train),
      'num_eval': len(evaluation),
      'resolution': int(resolution),
      'description': (
          f'TFDS {name} ({train_split} / {eval_split}, key {image_key!r}) '
          f'center-cropped and resized to {resolution}x{resolution}.'),
  }
  return sources.Splits(train=train, eval=evaluation, info=info)


def clear_cache() -> None:
  """Forgets cached builders (after preparing a dataset in this process)."""
  _builder.cache_clear()
