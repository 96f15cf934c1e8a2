"""`fashion_mnist`: Zalando's Fashion-MNIST from idx files or TFDS.

Where the images are looked for, in order (the first hit wins):

1. `config.dataset.data_dir`, when set (then only there: an explicit directory
   that lacks the files is an error, not a silent fallback);
2. `$FASHION_MNIST_DIR`;
3. `/usr/share/datasets/fashion-mnist` (Debian package `dataset-fashion-mnist`);
4. TFDS `fashion_mnist`, if prepared in `config.dataset.tfds_data_dir` (default:
   TFDS's own default, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`) in the
   `array_record` format (random access).

An idx directory holds `train-images-idx3-ubyte` and `t10k-images-idx3-ubyte`,
each optionally gzipped (`.gz`). train = the train file (60000), eval = t10k
(10000). The 28x28 grey images are zero-padded to 32x32 (black, i.e. -1 after
scaling to [-1, 1]), tiled to 3 channels, and resized (bicubic) when R != 32.

Keys (`config.dataset.*`):
  data_dir: directory with the idx files; default None (search as above).
  tfds_data_dir: TFDS data dir for the last fallback; default None.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from typing import Any

import numpy as np
from PIL import Image

from pcavae.data import sources

logger = logging.getLogger(__name__)

DEFAULTS = {'data_dir': None, 'tfds_data_dir': None}
ENV_VAR = 'FASHION_MNIST_DIR'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
TRAIN_FILE = 'train-images-idx3-ubyte'
EVAL_FILE = 't10k-images-idx3-ubyte'
NUM_TRAIN = 60000
NUM_EVAL = 10000
_PAD = 2  # 28 + 2 * 2 = 32


def validate(config: Any, resolution: int) -> None:
  """Cheap checks of the `fashion_mnist` keys; raises ValueError naming one."""
  del resolution
  for key in ('data_dir', 'tfds_data_dir'):
    value = sources.config_get(config, key, None)
    if value is not None and not isinstance(value, (str, os.PathLike)):
      raise ValueError(f'config.dataset.{key} must be a path or None, got '
                       f'{value!r}.')
  data_dir = sources.config_get(config, 'data_dir', None)
  if data_dir and not os.path.isdir(data_dir):
    raise ValueError(f'config.dataset.data_dir={str(data_dir)!r} is not a '
                     f'directory (it should hold {TRAIN_FILE}[.gz] and '
                     f'{EVAL_FILE}[.gz]).')


def _find_file(directory: str, name: str) -> str | None:
  for candidate in (name, name + '.gz'):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def _idx_files(directory: str) -> tuple[str, str] | None:
  if not directory or not os.path.isdir(directory):
    return None
  train = _find_file(directory, TRAIN_FILE)
  evaluation = _find_file(directory, EVAL_FILE)
  if train and evaluation:
    return train, evaluation
  return None


@functools.lru_cache(maxsize=4)
def read_idx_images(path: str) -> np.ndarray:
  """Reads an idx3-ubyte image file (optionally .gz) into uint8 `(N, H, W)`."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  magic = int.from_bytes(data[:4], 'big')
  if magic != 2051:
    raise ValueError(f'{path} is not an idx3-ubyte image file (magic {magic}, '
                     'expected 2051).')
  n, h, w = (int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(3))
  images = np.frombuffer(data, np.uint8, count=n * h * w, offset=16)
  images = images.reshape(n, h, w)
  images.setflags(write=False)
  return images


def pad_and_tile(grey: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 28x28 (or 28x28x1) -> uint8 `(R, R, 3)`: pad to 32, tile, resize."""
  grey = np.asarray(grey)
  if grey.ndim == 3:
    grey = grey[..., 0]
  padded = np.pad(grey, _PAD)
  if padded.shape != (resolution, resolution):
    padded = np.asarray(
        Image.fromarray(padded, mode='L').resize(
            (resolution, resolution), resample=Image.Resampling.BICUBIC),
        dtype=np.uint8)
  return np.repeat(padded[..., None], 3, axis=-1)


class FashionMnistSource:
  """Lazy pad/tile/resize over 28x28 grey images (an array or a TFDS source)."""

  def __init__(self, grey: Any, resolution: int, image_key: str | None = None):
    self._grey = grey
    self._resolution = int(resolution)
    self._image_key = image_key

  def __len__(self) -> int:
    return len(self._grey)

  def __getitem__(self, index: int) -> np.ndarray:
    element = self._grey[int(index)]
    if self._image_key is not None:
      element = element[self._image_key]
    return pad_and_tile(element, self._resolution)

  def __repr__(self) -> str:
    return f'FashionMnistSource(n={len(self)}, resolution={self._resolution})'


def _tfds_sources(tfds_data_dir: str | None):
  """Returns (train, eval, where) TFDS data sources, or (None, None, why)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, None, 'TFDS fashion_mnist (tensorflow_datasets not installed)'
  try:
    builder = tfds.builder('fashion_mnist', data_dir=tfds_data_dir)
  except Exception as e:  # pylint: disable=broad-except
    return None, None, f'TFDS fashion_mnist (builder failed: {e})'
  where = f'TFDS fashion_mnist in {builder.data_dir}'
  if not builder.is_prepared():
    return None, None, where + ' (not prepared)'
  file_format = str(getattr(builder.info.file_format, 'value',
                            builder.info.file_format))
  if file_format not in ('array_record', 'parquet'):
    return None, None, (where + f' (prepared as {file_format}; random access '
                        'needs --file_format=array_record)')
  return (builder.as_data_source(split='train'),
          builder.as_data_source(split='test'), where)


def get_splits(config: Any, resolution: int) -> sources.Splits:
  """Train (60000) and eval (t10k, 10000) splits; see the module docstring."""
  data_dir = sources.config_get(config, 'data_dir', None)
  tfds_data_dir = sources.config_get(config, 'tfds_data_dir', None)
  if data_dir:
    candidates = [('config.dataset.data_dir', str(data_dir))]
  else:
    candidates = []
    if os.environ.get(ENV_VAR):
      candidates.append((f'${ENV_VAR}', os.environ[ENV_VAR]))
    candidates.append(('Debian dataset-fashion-mnist', DEBIAN_DIR))
  looked = []
  for label, directory in candidates:
    files = _idx_files(directory)
    if files is not None:
      train = read_idx_images(files[0])
      evaluation = read_idx_images(files[1])
      origin = directory
      train_source = FashionMnistSource(train, resolution)
      eval_source = FashionMnistSource(evaluation, resolution)
      break
    looked.append(f'{label}: {directory}/{{{TRAIN_FILE},{EVAL_FILE}}}[.gz]')
  else:
    train_tfds = eval_tfds = None
    if not data_dir:
      train_tfds, eval_tfds, where = _tfds_sources(tfds_data_dir)
      looked.append(where)
    if train_tfds is None:
      raise ValueError(
          'fashion_mnist (config.dataset.name): images not found. Looked in:\n'
          + ''.join(f'  - {w}\n' for w in looked) +
          'Fix one of: set config.dataset.data_dir or $FASHION_MNIST_DIR to a '
          f'directory holding {TRAIN_FILE}[.gz] and {EVAL_FILE}[.gz]; '
          '`apt-get install dataset-fashion-mnist`; or '
          '`tfds build fashion_mnist --file_format=array_record` '
          '(with --data_dir=<config.dataset.tfds_data_dir> if set).')
    origin = looked[-1]
    train_source = FashionMnistSource(train_tfds, resolution, 'image')
    eval_source = FashionMnistSource(eval_tfds, resolution, 'image')
  logger.info('fashion_mnist: reading %s.', origin)
  info = {
      'name': 'fashion_mnist',
      'num_train': len(train_source),
      'num_eval': len(eval_source),
      'resolution': int(resolution),
      'origin': origin,
      'description': (
          f'Fashion-MNIST from {origin}: 28x28 grey padded to 32x32 (black), '
          f'tiled to RGB, at {resolution}x{resolution}; train = train file, '
          'eval = t10k.'),
  }
  return sources.Splits(train=train_source, eval=eval_source, info=info)
