"""The input/output contract of the commands that turn image folders into
files (`pcavae.reconstruct`, `pcavae.codec`): what is read, how outputs are
named, and how a failure is reported.

- Inputs: every file whose extension is one Pillow can open (JPEG, PNG, WebP,
  BMP, TIFF, GIF, ...), walked recursively in sorted order, hidden files and
  the output folder left out; others are named with a reason.
- Reading: EXIF orientation applied (`ImageOps.exif_transpose`), as a
  viewer shows the photo; a multi-frame file (GIF, APNG, multi-page TIFF)
  gives its first frame with a note saying so; any mode converted to RGB
  (`image_folder.pil_to_rgb`).
- Output names: `a/b.jpg` -> `a/b.png`, or `a/b.jpg.png` where another input
  would also become `a/b.png`, so no output overwrites another.
- Messages: per-file skips and failures on stderr, one line each, no
  traceback; the command exits non-zero when nothing was written.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from pcavae.data import image_folder


@functools.lru_cache(maxsize=1)
def image_extensions() -> tuple[str, ...]:
  """Lower-case extensions (with the dot) of every format Pillow can open."""
  Image.init()
  return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                      if fmt in Image.OPEN))


def list_inputs(input_path: str, exclude: Optional[str] = None,
                extensions: Optional[Sequence[str]] = None
                ) -> tuple[list[str], list[tuple[str, str]]]:
  """Files to read under `input_path` (a folder, walked recursively and
  sorted, or one file), and the files left out with the reason.

  Hidden files and folders are ignored; so is `exclude` (the output folder
  when it lies inside the input). A file whose extension is not in
  `extensions` (default: `image_extensions()`) is left out and named.
  """
  if os.path.isfile(input_path):
    return [input_path], []
  wanted = tuple(e.lower() for e in (extensions or image_extensions()))
  exclude = os.path.abspath(exclude) if exclude else None
  found, other = [], []
  for directory, subdirs, names in os.walk(input_path, followlinks=True):
    subdirs[:] = sorted(
        d for d in subdirs if not d.startswith('.') and
        os.path.abspath(os.path.join(directory, d)) != exclude)
    for name in sorted(names):
      if name.startswith('.'):
        continue
      path = os.path.join(directory, name)
      if name.lower().endswith(wanted):
        found.append(path)
      else:
        other.append((path, 'not an image file (extension '
                      f'{os.path.splitext(name)[1] or "none"})'))
  return found, other


def output_names(rels: Sequence[str], suffix: str = '.png') -> list[str]:
  """Output names of inputs at relative paths `rels`: `a/b.jpg` ->
  `a/b<suffix>`, but `a/b.jpg<suffix>` where another input would also
  become `a/b<suffix>` (e.g. `b.jpg` beside `b.png`), so none collide."""
  names = [os.path.splitext(r)[0] + suffix for r in rels]
  while True:  # each pass moves a clash to its full name; those never clash
    counts: dict[str, int] = {}
    for n in names:
      counts[n] = counts.get(n, 0) + 1
    clashes = [i for i, n in enumerate(names)
               if counts[n] > 1 and n != rels[i] + suffix]
    if not clashes:
      return names
    for i in clashes:
      names[i] = rels[i] + suffix


def relative_paths(paths: Sequence[str], root: str) -> list[str]:
  """`paths` relative to the folder `root`; a lone file's base name."""
  return [os.path.relpath(p, root) if os.path.isdir(root)
          else os.path.basename(p) for p in paths]


def read_image(path: str, max_pixels: Optional[int] = None
               ) -> tuple[np.ndarray, list[str]]:
  """Decodes one file to uint8 `(H, W, 3)`, upright, and notes about it.

  Args:
    path: an image file in any format Pillow opens.
    max_pixels: refuse larger images before decoding their pixels (None:
      Pillow's own decompression-bomb limit).

  Returns:
    `(image, notes)`; a note says when only the first of several frames
    was taken.

  Raises:
    OSError: naming `path` and the reason (truncated, corrupt, not an image,
      too large).
  """
  pil_limit = Image.MAX_IMAGE_PIXELS
  try:
    if max_pixels is not None:  # ours replaces Pillow's bomb check
      Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
      width, height = image.size
      if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f'{width}x{height} is {width * height:,} pixels, '
                         f'over the limit of {max_pixels:,} (--max_pixels)')
      frames = int(getattr(image, 'n_frames', 1) or 1)
      image.seek(0)
      image.load()
      array = image_folder.pil_to_rgb(ImageOps.exif_transpose(image))
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f'{path}: {type(e).__name__}: {e}') from e
  finally:
    Image.MAX_IMAGE_PIXELS = pil_limit
  notes = [f'first of {frames} frames'] if frames > 1 else []
  return array, notes


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 image as PNG, creating its folder.

  Raises:
    OSError: naming `path` and the reason (a folder in the way, no
      permission, disk full), on one line.
  """
  try:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    Image.fromarray(image).save(path, format='PNG')
  except (OSError, ValueError) as e:
    raise OSError(f'cannot write {path}: {_reason(e)}') from e


def write_bytes(data: bytes, path: str) -> None:
  """Writes `data` to `path`, creating its folder; OSError on one line."""
  try:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)
  except OSError as e:
    raise OSError(f'cannot write {path}: {_reason(e)}') from e


def _reason(e: Exception) -> str:
  return getattr(e, 'strerror', None) or f'{type(e).__name__}: {e}'


def warn(message: str) -> None:
  """One line on stderr (skips, failures, notes), flushed at once."""
  print(message, file=sys.stderr, flush=True)
