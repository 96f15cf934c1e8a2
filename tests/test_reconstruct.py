"""Full-size reconstruction by tiling works for every PCA mode and the other
bottleneck families: the stitched image is the model's output on each tile."""

import jax
import numpy as np
import pytest

from conftest import assert_same_image
from conftest import tiny_config
from conftest import uint8_reference
from pcavae import imageio
from pcavae import reconstruct
from pcavae import tiling
from pcavae import train


@pytest.mark.parametrize('family,arg', [
    ('pcavae', 'runlocal'), ('pcavae', 'setting=shared,runlocal'),
    ('pcavae', 'setting=global,runlocal'), ('vqvae', 'runlocal')])
def test_tiled_reconstruction_is_the_models_output_per_tile(family, arg):
  config = tiny_config(family, arg)
  if config.model.bottleneck.get('global_dim'):
    config.model.bottleneck.global_dim = 16  # <= the 4x4x8 latent
  model = train.create_model(config)
  key = jax.random.PRNGKey(0)
  variables = model.init({'params': key, 'sample': key},
                         np.zeros((1, 16, 16, 3), np.float32), train=False)
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (37, 21, 3), np.uint8),
            rng.integers(0, 256, (3, 3, 3), np.uint8)]
  tile_fn = reconstruct.make_tile_fn(model, variables, batch_size=4)
  recons = reconstruct.reconstruct_images(images, tile_fn, 16)
  for image, recon in zip(images, recons):
    assert recon.shape == image.shape and recon.dtype == np.uint8
    # The reference: the model (not jitted) on exactly this image's tiles.
    tiles, grid = tiling.tile(reconstruct.to_model_range(image), 16)
    own, _ = model.apply(variables, tiles, train=False)
    expected = uint8_reference(tiling.untile(np.asarray(own), grid))
    assert_same_image(recon, expected)


def test_output_names_keep_the_extension_only_on_a_clash(tmp_path):
  paths = [str(tmp_path / n) for n in ('a.jpg', 'a.png', 'b.jpeg',
                                       'sub/c.PNG')]
  assert imageio.output_names(imageio.relative_paths(
      paths, str(tmp_path))) == ['a.jpg.png', 'a.png.png', 'b.png',
                                 'sub/c.png']
  # A full name that is another input's short name moves on too.
  assert imageio.output_names(['a.jpg', 'a.png', 'a.jpg.png']) == [
      'a.jpg.png', 'a.png.png', 'a.jpg.png.png']


def test_list_inputs_skips_hidden_files_and_the_output_folder(tmp_path):
  for name in ('b.png', 'a.JPG', 'notes.txt', '.hidden.png', 'sub/c.webp',
               'out/old.png', '.git/x.png'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  found, other = imageio.list_inputs(str(tmp_path),
                                         exclude=str(tmp_path / 'out'))
  assert [p[len(str(tmp_path)) + 1:] for p in found] == [
      'a.JPG', 'b.png', 'sub/c.webp']
  assert [(p[len(str(tmp_path)) + 1:], r) for p, r in other] == [
      ('notes.txt', 'not an image file (extension .txt)')]
  one = str(tmp_path / 'b.png')
  assert imageio.list_inputs(one) == ([one], [])


def test_overlapping_tiles_are_the_models_output_cross_faded():
  config = tiny_config('pcavae', 'runlocal')
  model = train.create_model(config)
  key = jax.random.PRNGKey(0)
  variables = model.init({'params': key, 'sample': key},
                         np.zeros((1, 16, 16, 3), np.float32), train=False)
  image = np.random.default_rng(2).integers(0, 256, (37, 21, 3), np.uint8)
  tile_fn = reconstruct.make_tile_fn(model, variables, batch_size=4)
  (recon,) = reconstruct.reconstruct_images([image], tile_fn, 16, overlap=6)
  tiles, grid = tiling.tile_overlapping(reconstruct.to_model_range(image), 16,
                                        6)
  assert (grid.rows, grid.cols) == (4, 2)  # 10 px apart
  own, _ = model.apply(variables, tiles, train=False)
  expected = uint8_reference(tiling.blend(np.asarray(own), grid))
  assert recon.shape == image.shape
  assert_same_image(recon, expected)
  # Not the plain tiling: the overlap changes the pixels near tile borders.
  (plain,) = reconstruct.reconstruct_images([image], tile_fn, 16)
  assert np.abs(plain.astype(int) - recon.astype(int)).max() > 2
