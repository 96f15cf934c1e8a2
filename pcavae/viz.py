"""Image grids and plots for people to look at."""

from typing import Sequence

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8."""
  x = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255)
  return np.round(x).astype(np.uint8)


def image_grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Stacks rows of NHWC [-1, 1] images into one uint8 HWC grid.

  Each element of `rows` is a batch `(n, h, w, c)`; all rows have the same n.
  Used for the "originals over reconstructions" figure of every eval.
  """
  rows = [to_uint8(r) for r in rows]
  n, h, w, c = rows[0].shape
  grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255,
                 np.uint8)
  for i, r in enumerate(rows):
    for j in range(n):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = r[j]
  return grid
