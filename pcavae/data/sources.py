"""Random-access sources and the image helpers every dataset shares.

A *source* is anything with `len(src)` and `src[i] -> np.uint8 (R, R, 3)`; grain
wraps it with `grain.MapDataset.source`. Sources here are immutable and
thread-safe (grain reads them from a thread pool).
"""

from __future__ import annotations

from typing import (Any, Callable, Mapping, NamedTuple, Protocol, Sequence,
                    runtime_checkable)

import numpy as np
from PIL import Image


@runtime_checkable
class Source(Protocol):
  """Random access to uint8 `(R, R, 3)` images."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> np.ndarray:
    ...


class Splits(NamedTuple):
  """The splits of a dataset at one resolution.

  Attributes:
    train: random-access train images.
    eval: the held-out split used by periodic evaluation.
    info: `name`, `num_train`, `num_eval`, `description` and dataset-specific
      entries.
  """
  train: Source
  eval: Source
  info: dict


def config_get(config: Any, key: str, default: Any = None) -> Any:
  """`config.get(key, default)` for a ConfigDict, a Mapping or None."""
  if config is None:
    return default
  if isinstance(config, Mapping) or hasattr(config, 'get'):
    return config.get(key, default)
  return getattr(config, key, default)


def config_keys(config: Any) -> list[str]:
  """The keys of a ConfigDict or Mapping (empty for None)."""
  if config is None:
    return []
  if hasattr(config, 'keys'):
    return list(config.keys())
  return []


def center_crop_resize(image: Image.Image, resolution: int) -> np.ndarray:
  """Center-crops a PIL image to a square and resizes it to `resolution`.

  Downscaling with PIL's bicubic filter is antialiased (the filter support
  grows with the scale factor), so no separate blur is needed.

  Args:
    image: any-mode PIL image; converted to RGB.
    resolution: output side R.

  Returns:
    uint8 array `(R, R, 3)`.
  """
  if image.mode != 'RGB':
    image = image.convert('RGB')
  width, height = image.size
  side = min(width, height)
  left = (width - side) // 2
  top = (height - side) // 2
  box = (left, top, left + side, top + side)
  # Crop first: `resize(box=...)` would let the filter see pixels outside it.
  if (width, height) != (side, side):
    image = image.crop(box)
  if side != resolution:
    image = image.resize((resolution, resolution),
                         resample=Image.Resampling.BICUBIC)
  array = np.asarray(image, dtype=np.uint8)
  if array.shape != (resolution, resolution, 3):
    raise ValueError(f'Unexpected image shape {array.shape} after resizing to '
                     f'{resolution}.')
  return array


def array_to_rgb(array: np.ndarray, resolution: int) -> np.ndarray:
  """Converts a uint8 `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` array.

  Args:
    array: image array, uint8.
    resolution: output side R.

  Returns:
    uint8 `(R, R, 3)`, center-cropped and resized when needed.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'Expected a uint8 image, got {array.dtype}.')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 3 and array.shape[-1] == 4:
    array = array[..., :3]
  if array.ndim == 2:
    if array.shape != (resolution, resolution):
      image = Image.fromarray(array, mode='L')
      array = center_crop_resize(image, resolution)[..., 0]
    return np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f'Expected an image of shape (H, W[, 1|3|4]), got '
                     f'{array.shape}.')
  if array.shape[:2] == (resolution, resolution):
    return array
  return center_crop_resize(Image.fromarray(array, mode='RGB'), resolution)


class ArraySource:
  """An in-memory stack of uint8 images `(N, R, R, 3)`.

  Attributes:
    images: the read-only stack.
  """

  def __init__(self, images: np.ndarray):
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f'Expected uint8 (N, R, R, 3), got {images.dtype} '
                       f'{images.shape}.')
    images = images.view()
    images.setflags(write=False)
    self.images = images

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def __getitem__(self, index: int) -> np.ndarray:
    return self.images[int(index)]

  def _getitems(self, indices: Sequence[int]) -> list[np.ndarray]:
    return list(self.images[np.asarray(indices, dtype=np.int64)])

  def __repr__(self) -> str:
    return f'{type(self).__name__}(n={len(self)}, shape={self.images.shape[1:]})'


class MappedSource:
  """Applies `fn` lazily to the elements of a random-access sequence.

  Attributes:
    base: the underlying sequence.
  """

  def __init__(self, base: Sequence[Any], fn: Callable[[Any], np.ndarray],
               name: str = 'MappedSource'):
    self.base = base
    self._fn = fn
    self._name = name

  def __len__(self) -> int:
    return len(self.base)

  def __getitem__(self, index: int) -> np.ndarray:
    return self._fn(self.base[int(index)])

  def __repr__(self) -> str:
    return f'{self._name}(n={len(self)})'
