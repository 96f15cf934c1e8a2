"""`image_folder`: any folder of JPEG/PNG images (e.g. CelebA-HQ resized).

The folder is walked recursively for `*.jpg`, `*.jpeg`, `*.png` (any case); the
list is sorted by relative path and cut in order into 75% train, 10% eval
(validation) and 15% test (train = floor(0.75 n), eval = floor(0.10 n), test =
the rest). Files are checked once at listing time with a cheap header read
(`PIL.Image.open`, no pixel decode, threaded): zero-byte, unreadable or
non-image files are skipped, counted (`info['num_skipped']`) and reported once
in the log with a few names. Images are decoded lazily with PIL (JPEGs use
PIL's draft mode, i.e. DCT-domain downscaling, when much larger than R),
converted to RGB, center-cropped to a square and resized with antialiasing to
R x R. EXIF orientation is ignored. A file that passes the header check but
fails to decode later (e.g. truncated) is replaced by the next readable file
in its split, with a warning naming it.

Use `get_split(config, resolution, 'test')` for the test split.

Keys (`config.dataset.*`):
  path: the folder (required; `~` and environment variables are expanded).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pcavae.data import sources

logger = logging.getLogger(__name__)

DEFAULTS = {'path': None}
EXTENSIONS = ('.jpg', '.jpeg', '.png')
FRACTIONS = (0.75, 0.10)  # train, eval; test is the rest.
_FORMATS = ('JPEG', 'PNG', 'MPO')
_NUM_LISTING_THREADS = 8
_LISTING_CHUNK = 256


def _expand(path: Any) -> str:
  return os.path.expandvars(os.path.expanduser(os.fspath(path)))


def validate(config: Any, resolution: int) -> None:
  """Cheap checks of the `image_folder` keys; raises ValueError naming one."""
  del resolution
  path = sources.config_get(config, 'path', None)
  if not path:
    raise ValueError('config.dataset.path must name a folder of JPEG/PNG '
                     'images for config.dataset.name="image_folder".')
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f'config.dataset.path must be a path, got {path!r}.')
  if not os.path.isdir(_expand(path)):
    raise ValueError(f'config.dataset.path={str(path)!r} is not a directory '
                     f'(looked for a folder of {"/".join(EXTENSIONS)} files at '
                     f'{_expand(path)!r}).')


def _header_ok(path: str) -> bool:
  """Cheap check: non-empty and PIL recognises a JPEG/PNG header."""
  try:
    if os.path.getsize(path) == 0:
      return False
    with Image.open(path) as image:
      return (image.format in _FORMATS and image.size[0] > 0
              and image.size[1] > 0)
  except Exception:  # pylint: disable=broad-except
    return False


def _walk(root: str) -> list[str]:
  files = []
  for directory, subdirs, names in os.walk(root, followlinks=True):
    subdirs.sort()
    for name in names:
      if name.lower().endswith(EXTENSIONS) and not name.startswith('.'):
        files.append(os.path.join(directory, name))
  prefix = len(os.path.join(root, ''))
  return sorted(files, key=lambda p: p[prefix:].split(os.sep))


def _headers_ok(paths: Sequence[str]) -> list[bool]:
  return [_header_ok(p) for p in paths]


@functools.lru_cache(maxsize=8)
def list_images(root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Sorted readable image files under `root`, and the skipped ones.

  Args:
    root: an existing directory.

  Returns:
    `(readable, skipped)`, both sorted by relative path.
  """
  candidates = _walk(root)
  # Threads overlap file-system latency (network disks); chunks keep the
  # per-future overhead small against ~30 us per local header read.
  chunks = [candidates[i:i + _LISTING_CHUNK]
            for i in range(0, len(candidates), _LISTING_CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(_NUM_LISTING_THREADS) as pool:
    ok = [good for chunk in pool.map(_headers_ok, chunks) for good in chunk]
  readable = tuple(p for p, good in zip(candidates, ok) if good)
  skipped = tuple(p for p, good in zip(candidates, ok) if not good)
  if skipped:
    shown = [os.path.relpath(p, root) for p in skipped[:5]]
    logger.warning('image_folder: skipped %d unreadable/empty image file(s) '
                   'under %s, e.g. %s', len(skipped), root, shown)
  return readable, skipped


def load_image(path: str, resolution: int) -> np.ndarray:
  """Decodes one file to uint8 `(R, R, 3)` (center crop, antialiased resize)."""
  with Image.open(path) as image:
    if image.format in ('JPEG', 'MPO'):
      # Keeps the short side >= R while letting libjpeg downscale by 2^k.
      image.draft('RGB', (resolution, resolution))
    image.load()
    return sources.center_crop_resize(image, resolution)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
  """A loaded PIL image of any mode as uint8 `(H, W, 3)`.

  Gray, RGBA, palette, CMYK go through PIL's `convert('RGB')` (transparency
  composited on black); 16/32-bit gray is scaled to 8 bits, where PIL would
  clip.
  """
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    array = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith('I;16') else max(
        float(array.max()), 1.0)
    gray = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'), np.uint8)


def read_rgb(path: str) -> np.ndarray:
  """Decodes one whole file to uint8 `(H, W, 3)` at its own size
  (`pil_to_rgb`; EXIF orientation ignored, as in training).

  Raises:
    OSError: naming `path` and PIL's reason when the file cannot be decoded
      (truncated, corrupt, not an image).
  """
  try:
    with Image.open(path) as image:
      image.load()
      return pil_to_rgb(image)
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f'{path}: {type(e).__name__}: {e}') from e


class ImageFileSource:
  """Lazily decoded image files.

  Attributes:
    paths: the files, in order.
    resolution: output side R.
  """

  def __init__(self, paths: Sequence[str], resolution: int):
    self.paths = tuple(paths)
    self.resolution = int(resolution)
    self._lock = threading.Lock()
    self._warned: set[str] = set()

  def __getstate__(self) -> dict:
    # Picklable for grain worker processes (the lock is not); each worker
    # gets a lock of its own.
    state = dict(self.__dict__)
    del state['_lock']
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    for offset in range(min(len(self.paths), 16)):
      path = self.paths[(index + offset) % len(self.paths)]
      try:
        return load_image(path, self.resolution)
      except Exception as e:  # pylint: disable=broad-except
        with self._lock:
          first = path not in self._warned
          self._warned.add(path)
        if first:
          logger.warning('image_folder: cannot decode %s (%s); using the next '
                         'file instead.', path, e)
    raise ValueError(f'image_folder: could not decode {self.paths[index]} nor '
                     'the 15 files after it.')

  def __repr__(self) -> str:
    return f'ImageFileSource(n={len(self)}, resolution={self.resolution})'


def split_sizes(n: int) -> tuple[int, int, int]:
  """(train, eval, test) sizes of a sorted list of `n` files: 75/10/15."""
  num_train = int(n * FRACTIONS[0])
  num_eval = int(n * FRACTIONS[1])
  return num_train, num_eval, n - num_train - num_eval


def _split_paths(config: Any) -> tuple[dict[str, tuple[str, ...]], dict]:
  validate(config, 0)
  root = os.path.abspath(_expand(sources.config_get(config, 'path')))
  readable, skipped = list_images(root)
  num_train, num_eval, num_test = split_sizes(len(readable))
  if num_train == 0 or num_eval == 0:
    raise ValueError(
        f'config.dataset.path={root!r}: found {len(readable)} readable '
        f'{"/".join(EXTENSIONS)} file(s) (recursively; {len(skipped)} '
        'unreadable skipped); the 75/10/15 split needs at least 10 so that '
        'train and eval are non-empty.')
  paths = {
      'train': readable[:num_train],
      'eval': readable[num_train:num_train + num_eval],
      'test': readable[num_train + num_eval:],
  }
  info = {
      'name': 'image_folder',
      'path': root,
      'num_train': num_train,
      'num_eval': num_eval,
      'num_test': num_test,
      'num_skipped': len(skipped),
      'skipped_examples': [os.path.relpath(p, root) for p in skipped[:10]],
  }
  return paths, info


def get_split(config: Any, resolution: int, split: str) -> ImageFileSource:
  """One of 'train', 'eval' (validation) or 'test' as a lazy source."""
  paths, _ = _split_paths(config)
  if split not in paths:
    raise ValueError(f'Unknown split {split!r}; expected one of '
                     f'{tuple(paths)}.')
  return ImageFileSource(paths[split], resolution)


def get_splits(config: Any, resolution: int) -> sources.Splits:
  """Train and eval sources; `info` is JSON-serialisable (test: `get_split`)."""
  paths, info = _split_paths(config)
  info['resolution'] = int(resolution)
  info['description'] = (
      f'image_folder {info["path"]}: {info["num_train"]}/{info["num_eval"]}/'
      f'{info["num_test"]} train/eval/test files (sorted, 75/10/15), '
      f'{info["num_skipped"]} skipped, center-cropped and resized to '
      f'{resolution}x{resolution}.')
  return sources.Splits(train=ImageFileSource(paths['train'], resolution),
                        eval=ImageFileSource(paths['eval'], resolution),
                        info=info)


def clear_cache() -> None:
  """Forgets folder listings (call after changing a folder's contents)."""
  list_images.cache_clear()
