"""`photo_patches`: RGB crops of the photographs that ship inside installed wheels.

The embedded default dataset: no download, no network. The photographs are read
straight from the package folders of scikit-image (`skimage/data`),
scikit-learn (`sklearn/datasets/images`) and matplotlib
(`mpl-data/sample_data`); the packages themselves are never imported (their
`data` helpers may try to fetch through pooch).

Photos (real RGB photographs only; the synthetic or grey test images --
`color`, `phantom`, `chessboard_*`, `logo`, `horse`, `camera`, `brick`, ... --
are not used, and `motorcycle_right` is left out because it is the other half of
the `motorcycle_left` stereo pair):

* train (`TRAIN_PHOTOS`): astronaut, chelsea, rocket, motorcycle_left,
  hubble_deep_field, retina, ihc (skimage), china (sklearn).
* eval, held out BY PHOTO (`EVAL_PHOTOS`): coffee (skimage), flower (sklearn),
  grace_hopper (matplotlib).

Crops, deterministic: for every scale `s` in `config.dataset.scales` the photo
is resized (antialiased) so that its shorter side is `R / s` pixels -- a crop
then covers the fraction `s` of the shorter side -- but never upscaled beyond
its native size (unless the native size is below R, then the shorter side
becomes R). Crops of `R x R` are taken on a grid with stride
`round(stride_fraction * R)`, centred in the photo. Crops whose pixel standard
deviation is below `min_std` (black borders of the retina and the Hubble
field) are dropped. With the defaults: 2887 train / 1194 eval crops at R=32,
2390 / 919 at R=64 (853 / 180 at R=128); built in about 0.4 s and cached in
memory per process.

Keys (`config.dataset.*`):
  scales: crop side as a fraction of the photo's shorter side; default
    `(0.125, 0.25, 0.5)`.
  stride_fraction: grid stride as a fraction of R, in (0, 1]; default 0.5.
  min_std: drop crops with a pixel std (uint8 units) below this; default 2.0.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pcavae.data import sources

logger = logging.getLogger(__name__)

DEFAULTS = {
    'scales': (0.125, 0.25, 0.5),
    'stride_fraction': 0.5,
    'min_std': 2.0,
}

# name -> (top-level package, path inside the package folder).
PHOTOS: dict[str, tuple[str, str]] = {
    'astronaut': ('skimage', 'data/astronaut.png'),
    'chelsea': ('skimage', 'data/chelsea.png'),
    'coffee': ('skimage', 'data/coffee.png'),
    'rocket': ('skimage', 'data/rocket.jpg'),
    'motorcycle_left': ('skimage', 'data/motorcycle_left.png'),
    'hubble_deep_field': ('skimage', 'data/hubble_deep_field.jpg'),
    'retina': ('skimage', 'data/retina.jpg'),
    'ihc': ('skimage', 'data/ihc.png'),
    'china': ('sklearn', 'datasets/images/china.jpg'),
    'flower': ('sklearn', 'datasets/images/flower.jpg'),
    'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
}
TRAIN_PHOTOS: tuple[str, ...] = ('astronaut', 'chelsea', 'rocket',
                                 'motorcycle_left', 'hubble_deep_field',
                                 'retina', 'ihc', 'china')
EVAL_PHOTOS: tuple[str, ...] = ('coffee', 'flower', 'grace_hopper')


def validate(config: Any, resolution: int) -> None:
  """Cheap checks of the `photo_patches` keys; raises ValueError naming one."""
  del resolution
  scales = sources.config_get(config, 'scales', DEFAULTS['scales'])
  try:
    scales = tuple(float(s) for s in scales)
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.dataset.scales must be a sequence of numbers in '
                     f'(0, 1], got {scales!r}.') from e
  if not scales or any(not 0 < s <= 1 for s in scales):
    raise ValueError(f'config.dataset.scales must be a non-empty sequence of '
                     f'numbers in (0, 1], got {scales!r}.')
  stride = sources.config_get(config, 'stride_fraction',
                              DEFAULTS['stride_fraction'])
  if not isinstance(stride, (int, float)) or not 0 < stride <= 1:
    raise ValueError(f'config.dataset.stride_fraction must be in (0, 1], got '
                     f'{stride!r}.')
  min_std = sources.config_get(config, 'min_std', DEFAULTS['min_std'])
  if not isinstance(min_std, (int, float)) or min_std < 0:
    raise ValueError(f'config.dataset.min_std must be a number >= 0, got '
                     f'{min_std!r}.')


def photo_path(name: str) -> str | None:
  """Absolute path of a photo, or None when its package is not installed."""
  package, relative = PHOTOS[name]
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], relative)


@functools.lru_cache(maxsize=None)
def _load_photo(path: str) -> np.ndarray:
  with Image.open(path) as image:
    array = np.asarray(image.convert('RGB'), dtype=np.uint8)
  array.setflags(write=False)
  return array


def _available(names: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits names into (present, looked-for paths of the missing ones)."""
  present, missing = [], []
  for name in names:
    path = photo_path(name)
    if path is not None and os.path.isfile(path):
      present.append(name)
    else:
      package, relative = PHOTOS[name]
      missing.append(path or f'<{package} not installed>/{relative}')
  return present, missing


def _grid(length: int, size: int, stride: int) -> range:
  """Centred positions of `size` windows with `stride` inside `length`."""
  count = (length - size) // stride + 1
  offset = (length - size - (count - 1) * stride) // 2
  return range(offset, offset + count * stride, stride)


def photo_crops(photo: np.ndarray, resolution: int, scales: Sequence[float],
                stride_fraction: float, min_std: float) -> np.ndarray:
  """All grid crops of one photo at every scale.

  Args:
    photo: uint8 `(H, W, 3)`.
    resolution: crop side R.
    scales: crop side as a fraction of the photo's shorter side.
    stride_fraction: grid stride as a fraction of R.
    min_std: crops with a lower pixel std are dropped.

  Returns:
    uint8 `(n, R, R, 3)`.
  """
  height, width = photo.shape[:2]
  short = min(height, width)
  stride = max(1, round(stride_fraction * resolution))
  targets = sorted({max(resolution, min(round(resolution / s), short))
                    for s in scales})
  image = Image.fromarray(photo)
  crops = []
  for target in targets:
    size = (max(target, round(width * target / short)),
            max(target, round(height * target / short)))
    resized = np.asarray(
        image if size == (width, height) else image.resize(
            size, resample=Image.Resampling.LANCZOS), dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(
        resized, (resolution, resolution), axis=(0, 1))
    rows = list(_grid(size[1], resolution, stride))
    cols = list(_grid(size[0], resolution, stride))
    # windows: (H', W', 3, R, R) -> picked (n_rows, n_cols, 3, R, R).
    picked = windows[np.ix_(rows, cols)]
    crops.append(picked.reshape(-1, 3, resolution, resolution)
                 .transpose(0, 2, 3, 1))
  stacked = np.concatenate(crops)
  if min_std > 0:
    std = stacked.reshape(len(stacked), -1).std(axis=1)
    stacked = stacked[std >= min_std]
  return np.ascontiguousarray(stacked)


class PhotoPatchSource(sources.ArraySource):
  """Crops of several photos, with the photo each crop came from.

  Attributes:
    images: uint8 `(N, R, R, 3)`.
    photo_ids: int32 `(N,)` index into `photo_names`.
    photo_names: the photos, in id order.
  """

  def __init__(self, images: np.ndarray, photo_ids: np.ndarray,
               photo_names: Sequence[str]):
    super().__init__(images)
    photo_ids = np.asarray(photo_ids, np.int32)
    photo_ids.setflags(write=False)
    self.photo_ids = photo_ids
    self.photo_names = tuple(photo_names)

  def photo_of(self, index: int) -> str:
    """Name of the photo crop `index` came from."""
    return self.photo_names[int(self.photo_ids[int(index)])]


@dataclasses.dataclass(frozen=True)
class _Built:
  train: PhotoPatchSource
  eval: PhotoPatchSource
  missing: tuple[str, ...]


def _build_source(names: Sequence[str], resolution: int,
                  scales: tuple[float, ...], stride_fraction: float,
                  min_std: float) -> PhotoPatchSource:
  crops, ids = [], []
  for i, name in enumerate(names):
    c = photo_crops(_load_photo(photo_path(name)), resolution, scales,
                    stride_fraction, min_std)
    crops.append(c)
    ids.append(np.full(len(c), i, np.int32))
  return PhotoPatchSource(np.concatenate(crops), np.concatenate(ids), names)


@functools.lru_cache(maxsize=8)
def _build(resolution: int, scales: tuple[float, ...], stride_fraction: float,
           min_std: float) -> _Built:
  train_names, train_missing = _available(TRAIN_PHOTOS)
  eval_names, eval_missing = _available(EVAL_PHOTOS)
  missing = tuple(train_missing + eval_missing)
  if not train_names or not eval_names:
    raise ValueError(
        'photo_patches needs at least one train and one eval photo; found '
        f'train={train_names}, eval={eval_names}. Missing files: '
        f'{list(missing)}. Fix: install the wheels that ship them '
        '(pip install scikit-image scikit-learn matplotlib) or choose another '
        'config.dataset.name.')
  if missing:
    logger.warning('photo_patches: skipping %d missing photo(s) (older package '
                   'versions?): %s', len(missing), list(missing))
  return _Built(
      train=_build_source(train_names, resolution, scales, stride_fraction,
                          min_std),
      eval=_build_source(eval_names, resolution, scales, stride_fraction,
                         min_std),
      missing=missing)


def clear_cache() -> None:
  """Drops the in-memory crops and decoded photos."""
  _build.cache_clear()
  _load_photo.cache_clear()


def get_splits(config: Any, resolution: int) -> sources.Splits:
  """Train and eval crops plus an info dict (see the module docstring)."""
  scales = tuple(float(s) for s in sources.config_get(
      config, 'scales', DEFAULTS['scales']))
  stride_fraction = float(sources.config_get(config, 'stride_fraction',
                                             DEFAULTS['stride_fraction']))
  min_std = float(sources.config_get(config, 'min_std', DEFAULTS['min_std']))
  built = _build(int(resolution), scales, stride_fraction, min_std)
  info = {
      'name': 'photo_patches',
      'num_train': len(built.train),
      'num_eval': len(built.eval),
      'resolution': int(resolution),
      'train_photos': built.train.photo_names,
      'eval_photos': built.eval.photo_names,
      'missing_photos': built.missing,
      'scales': scales,
      'stride_fraction': stride_fraction,
      'min_std': min_std,
      'description': (
          f'{resolution}x{resolution} RGB crops at scales {scales} of the '
          'photographs shipped in scikit-image / scikit-learn / matplotlib; '
          f'train photos {list(built.train.photo_names)}, held-out eval '
          f'photos {list(built.eval.photo_names)}.'),
  }
  return sources.Splits(train=built.train, eval=built.eval, info=info)
