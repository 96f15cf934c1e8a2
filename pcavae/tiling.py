"""Cut an image into tiles of the trained size and stitch them back.

A model trained at resolution r (and, for a `spatial` PCA, one basis per
latent location) only sees r x r inputs. Full-size inference therefore cuts
the image into a grid of r x r tiles, reflect-padding the right and bottom
edges up to a multiple of r, runs every tile through the same jitted function
in fixed-size batches, and crops the stitched result back to the original
size. Pure numpy: no JAX, no model; `reconstruct.py` and `codec.py` share it.
"""

from typing import Callable, NamedTuple

import numpy as np


class Grid(NamedTuple):
  """Where the tiles of one image came from."""
  height: int  # original image height
  width: int  # original image width
  rows: int  # tiles down
  cols: int  # tiles across
  size: int  # tile side (the run's resolution)

  @property
  def num_tiles(self) -> int:
    return self.rows * self.cols


def grid_for(height: int, width: int, size: int) -> Grid:
  """The tile grid covering a `height` x `width` image with `size` tiles."""
  if height < 1 or width < 1:
    raise ValueError(f'Empty image: {height}x{width}.')
  if size < 1:
    raise ValueError(f'Tile size must be positive, got {size}.')
  return Grid(height, width, -(-height // size), -(-width // size), size)


def _pad_axis(image: np.ndarray, axis: int, pad: int) -> np.ndarray:
  """Reflect-pads the end of one axis by `pad`; repeats the reflection while
  the pad is wider than the image (numpy's 'reflect' needs pad < side), and
  repeats the pixel for a side of 1, which has nothing to reflect."""
  while pad > 0:
    side = image.shape[axis]
    step = min(pad, side - 1) if side > 1 else pad
    widths = [(0, 0)] * image.ndim
    widths[axis] = (0, step)
    image = np.pad(image, widths, mode='reflect' if side > 1 else 'edge')
    pad -= step
  return image


def _pad(image: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
  """Reflect-pads the bottom and right edges (each axis on its own, so a
  one-pixel-high row still reflects along its width)."""
  return _pad_axis(_pad_axis(image, 0, pad_h), 1, pad_w)


def tile(image: np.ndarray, size: int) -> tuple[np.ndarray, Grid]:
  """Cuts an (H, W, C) image into (rows * cols, size, size, C) tiles, row-major.

  Edges are reflect-padded up to a multiple of `size`; `untile` crops back.
  """
  if image.ndim != 3:
    raise ValueError(f'Expected an (H, W, C) image, got shape {image.shape}.')
  h, w, c = image.shape
  grid = grid_for(h, w, size)
  padded = _pad(image, grid.rows * size - h, grid.cols * size - w)
  tiles = padded.reshape(grid.rows, size, grid.cols, size, c)
  tiles = tiles.transpose(0, 2, 1, 3, 4).reshape(-1, size, size, c)
  return tiles, grid


def untile(tiles: np.ndarray, grid: Grid) -> np.ndarray:
  """Inverse of `tile`: stitches row-major tiles and crops to (H, W, C)."""
  n, s, s2, c = tiles.shape
  if n != grid.num_tiles or s != grid.size or s2 != grid.size:
    raise ValueError(f'{tiles.shape[:3]} tiles do not fit the grid {grid}.')
  image = tiles.reshape(grid.rows, grid.cols, s, s, c).transpose(0, 2, 1, 3, 4)
  image = image.reshape(grid.rows * s, grid.cols * s, c)
  return image[:grid.height, :grid.width]


def map_tiles(fn: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray,
              batch_size: int) -> np.ndarray:
  """Applies `fn` to `tiles` in fixed-size batches (the last one zero-padded),
  so a jitted `fn` compiles once whatever the number of tiles."""
  out = []
  for start in range(0, len(tiles), batch_size):
    chunk = tiles[start:start + batch_size]
    batch = np.zeros((batch_size,) + tiles.shape[1:], tiles.dtype)
    batch[:len(chunk)] = chunk
    out.append(np.asarray(fn(batch))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0,) + tiles.shape[1:])


class OverlapGrid(NamedTuple):
  """Where the overlapping tiles of one image came from (`tile_overlapping`)."""
  height: int  # original image height
  width: int  # original image width
  rows: int  # tiles down
  cols: int  # tiles across
  size: int  # tile side (the run's resolution)
  overlap: int  # pixels shared by neighbouring tiles

  @property
  def num_tiles(self) -> int:
    return self.rows * self.cols

  @property
  def stride(self) -> int:
    return self.size - self.overlap


def overlap_grid_for(height: int, width: int, size: int,
                     overlap: int) -> OverlapGrid:
  """The grid of `size` tiles, `overlap` px apart from each neighbour, that
  covers a `height` x `width` image."""
  grid_for(height, width, size)  # the same checks of the sizes
  if not 0 <= overlap < size:
    raise ValueError(f'overlap={overlap} must lie in 0..{size - 1} (the tile '
                     f'side is {size}).')
  stride = size - overlap
  count = lambda side: 1 + max(0, -(-(side - size) // stride))
  return OverlapGrid(height, width, count(height), count(width), size,
                     overlap)


def blend_window(size: int, overlap: int) -> np.ndarray:
  """(size,) weights of one tile axis: a linear ramp over the `overlap` px
  at each end, 1 between. Neighbours' ramps sum to a constant across their
  overlap, so blending cross-fades from one tile to the next; every weight
  is positive, so a border pixel that only one tile covers keeps its value."""
  i = np.arange(size, dtype=np.float64) + 0.5
  if not overlap:
    return np.ones((size,))
  return np.minimum(1.0, np.minimum(i, size - i) / overlap)


def tile_overlapping(image: np.ndarray, size: int, overlap: int
                     ) -> tuple[np.ndarray, OverlapGrid]:
  """Cuts an (H, W, C) image into (rows * cols, size, size, C) tiles that
  share `overlap` px with each neighbour, row-major; edges reflect-padded
  as in `tile`. `blend` stitches them back."""
  if image.ndim != 3:
    raise ValueError(f'Expected an (H, W, C) image, got shape {image.shape}.')
  h, w, _ = image.shape
  grid = overlap_grid_for(h, w, size, overlap)
  s = grid.stride
  padded = _pad(image, (grid.rows - 1) * s + size - h,
                (grid.cols - 1) * s + size - w)
  tiles = [padded[r * s:r * s + size, c * s:c * s + size]
           for r in range(grid.rows) for c in range(grid.cols)]
  return np.stack(tiles), grid


def blend(tiles: np.ndarray, grid: OverlapGrid) -> np.ndarray:
  """Inverse of `tile_overlapping`: each pixel the weighted mean of the
  tiles covering it (`blend_window` along each axis), cropped to (H, W, C).
  With `overlap=0` this is `untile`."""
  n, s, s2, c = tiles.shape
  if n != grid.num_tiles or s != grid.size or s2 != grid.size:
    raise ValueError(f'{tiles.shape[:3]} tiles do not fit the grid {grid}.')
  window = blend_window(s, grid.overlap)
  weight = (window[:, None] * window[None, :])[..., None]
  stride = grid.stride
  shape = ((grid.rows - 1) * stride + s, (grid.cols - 1) * stride + s)
  total = np.zeros(shape + (c,), np.float64)
  norm = np.zeros(shape + (1,), np.float64)
  for i, t in enumerate(tiles):
    r, col = divmod(i, grid.cols)
    y, x = r * stride, col * stride
    total[y:y + s, x:x + s] += weight * t
    norm[y:y + s, x:x + s] += weight
  out = total / norm
  return out[:grid.height, :grid.width].astype(
      tiles.dtype if np.issubdtype(tiles.dtype, np.floating) else np.float32)
