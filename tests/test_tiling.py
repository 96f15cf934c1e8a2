"""pcavae.tiling: tiles of the trained size, reflect-padded, stitched back."""

import numpy as np
import pytest

from pcavae import tiling


def _image(h, w, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), np.uint8)


@pytest.mark.parametrize('h,w,size', [
    (16, 16, 16), (17, 33, 16), (40, 30, 16), (5, 70, 8), (1, 1, 8),
    (3, 3, 16), (1, 9, 4), (9, 1, 4), (31, 2, 32)])
def test_round_trip_at_any_size(h, w, size):
  image = _image(h, w)
  tiles, grid = tiling.tile(image, size)
  assert grid == tiling.Grid(h, w, -(-h // size), -(-w // size), size)
  assert tiles.shape == (grid.rows * grid.cols, size, size, 3)
  assert tiles.dtype == image.dtype
  np.testing.assert_array_equal(tiling.untile(tiles, grid), image)


def test_tiles_are_row_major_crops():
  image = _image(32, 48)
  tiles, grid = tiling.tile(image, 16)
  assert (grid.rows, grid.cols) == (2, 3)
  np.testing.assert_array_equal(tiles[1], image[0:16, 16:32])
  np.testing.assert_array_equal(tiles[3], image[16:32, 0:16])


def test_reflect_padding_values():
  # One row 0..4 cut into tiles of 8: columns 5, 6, 7 mirror 3, 2, 1
  # (numpy 'reflect', the edge pixel not repeated); a single row has nothing
  # to reflect, so rows 1..7 repeat it.
  row = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
  tiles, _ = tiling.tile(row, 8)
  np.testing.assert_array_equal(tiles[0, 0, :, 0], [0, 1, 2, 3, 4, 3, 2, 1])
  np.testing.assert_array_equal(tiles[0, 7, :, 0], tiles[0, 0, :, 0])
  # A 3x3 image padded to 8: the reflection repeats while the pad exceeds
  # the image (0 1 2 1 0 1 2 1), in both directions.
  image = (np.arange(3)[:, None] * 10 + np.arange(3)[None, :]).astype(
      np.int32)[..., None]
  tiles, grid = tiling.tile(image, 8)
  assert grid.num_tiles == 1
  np.testing.assert_array_equal(tiles[0, 0, :, 0], [0, 1, 2, 1, 0, 1, 2, 1])
  np.testing.assert_array_equal(tiles[0, :, 0, 0],
                                [0, 10, 20, 10, 0, 10, 20, 10])
  np.testing.assert_array_equal(tiles[0, 5, 6, 0], 10 * 1 + 2)


def test_one_pixel_image_fills_the_tile():
  image = np.full((1, 1, 3), 7, np.uint8)
  tiles, grid = tiling.tile(image, 4)
  assert tiles.shape == (1, 4, 4, 3) and np.all(tiles == 7)
  np.testing.assert_array_equal(tiling.untile(tiles, grid), image)


def test_map_tiles_uses_fixed_batches_and_keeps_order():
  tiles = np.arange(7 * 2 * 2 * 1, dtype=np.float32).reshape(7, 2, 2, 1)
  seen = []

  def fn(batch):
    seen.append(batch.shape)
    return batch * 2 + 1

  out = tiling.map_tiles(fn, tiles, batch_size=3)
  assert seen == [(3, 2, 2, 1)] * 3  # 3 + 3 + 1 (zero-padded to 3)
  np.testing.assert_array_equal(out, tiles * 2 + 1)
  assert tiling.map_tiles(fn, tiles[:0], batch_size=3).shape == (0, 2, 2, 1)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='Empty image'):
    tiling.tile(np.zeros((0, 4, 3)), 4)
  with pytest.raises(ValueError, match='Tile size'):
    tiling.tile(np.zeros((4, 4, 3)), 0)
  with pytest.raises(ValueError, match=r'\(H, W, C\)'):
    tiling.tile(np.zeros((4, 4)), 2)
  tiles, grid = tiling.tile(_image(20, 20), 8)
  with pytest.raises(ValueError, match='do not fit the grid'):
    tiling.untile(tiles[:-1], grid)


@pytest.mark.parametrize('h,w,size,overlap', [
    (16, 16, 16, 8), (37, 21, 16, 4), (100, 70, 32, 8), (1, 1, 8, 2),
    (5, 70, 8, 7), (33, 17, 16, 0)])
def test_overlapping_tiles_blend_back_to_the_image(h, w, size, overlap):
  image = _image(h, w).astype(np.float32)
  tiles, grid = tiling.tile_overlapping(image, size, overlap)
  stride = size - overlap
  assert tiles.shape == (grid.num_tiles, size, size, 3)
  # Just enough tiles: the last one reaches the edge, one fewer would not.
  for side, count in ((h, grid.rows), (w, grid.cols)):
    assert (count - 1) * stride + size >= side
    assert count == 1 or (count - 2) * stride + size < side
  if grid.cols > 1:  # the second tile starts `stride` px to the right
    inside = image[:size, stride:stride + size]
    np.testing.assert_array_equal(
        tiles[1][:inside.shape[0], :inside.shape[1]], inside)
  np.testing.assert_allclose(tiling.blend(tiles, grid), image, atol=1e-4)


def test_blending_cross_fades_over_the_overlap():
  """Two constant tiles, 0 and 1, overlapping by 4 px: 0 left of the
  overlap, 1 right of it, a linear ramp across it."""
  tiles = np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))])
  grid = tiling.overlap_grid_for(8, 12, 8, 4)
  assert (grid.rows, grid.cols) == (1, 2)
  row = tiling.blend(tiles, grid)[0, :, 0]
  np.testing.assert_allclose(row, [0, 0, 0, 0, 1 / 8, 3 / 8, 5 / 8, 7 / 8,
                                   1, 1, 1, 1], atol=1e-12)


def test_overlap_must_be_less_than_the_tile():
  with pytest.raises(ValueError, match='overlap=16 must lie in 0..15'):
    tiling.overlap_grid_for(40, 40, 16, 16)
