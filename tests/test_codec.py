"""The entropy codec (`pcavae.codec`) on tiny trained PCA and FSQ models."""

import configparser
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from conftest import uint8_reference
from pcavae import bits
from pcavae import codec as codec_lib
from pcavae import tiling
from pcavae import train
from pcavae.data import image_folder
from pcavae.data import photo_patches
from pcavae.data import pipeline
from pcavae.models import coding

BUDGET = 24  # bits per 16 x 16 tile: 4 x 4 locations x 4 components


@pytest.fixture(scope='module')
def pca_workdir(codec_pca_workdir):
  return codec_pca_workdir


@pytest.fixture(scope='module')
def fsq_workdir(codec_fsq_workdir):
  return codec_fsq_workdir


@pytest.fixture(scope='module')
def pca_codec(pca_workdir):
  return codec_lib.Codec(pca_workdir, budget=BUDGET, batch_size=8)


@pytest.fixture(scope='module')
def fsq_codec(fsq_workdir):
  return codec_lib.Codec(fsq_workdir, batch_size=8, count_images=64)


@pytest.fixture(scope='module')
def photo():
  """A held-out photograph's corner, not a multiple of the 16-px tile."""
  path = photo_patches.photo_path('coffee')
  return image_folder.read_rgb(path)[100:137, 200:221]


def _eval_path(c, image, rate_kind, rate):
  """The eval path on the image's tiles: `(symbols, reconstruction uint8)`."""
  config = c._rate_config(rate_kind, rate)  # pylint: disable=protected-access
  model = train.create_model(config)
  tiles, grid = tiling.tile(image, c.tile_size)
  recon, aux = model.apply(c.variables, pipeline.to_float(tiles), train=False)
  key = 'symbols' if c.kind == 'pca' else 'codes'
  return (np.asarray(aux[key]), np.asarray(recon),
          uint8_reference(tiling.untile(np.asarray(recon), grid)))


@pytest.mark.parametrize('which', ['pca', 'fsq'])
def test_round_trip_is_the_quantized_reconstruction(which, pca_codec,
                                                    fsq_codec, photo):
  c = pca_codec if which == 'pca' else fsq_codec
  out = c.compress(photo)
  header, symbols = c.decode_symbols(out.data)
  ref_symbols, ref_tiles, ref_image = _eval_path(c, photo, c.rate_kind,
                                                 c.rate)
  # The decoded latent is the eval path's, symbol for symbol.
  np.testing.assert_array_equal(symbols, ref_symbols)
  image = c.decompress(out.data)
  assert image.shape == photo.shape  # 37 x 21: back at its own size
  assert (header.height, header.width) == photo.shape[:2]
  np.testing.assert_array_equal(image, out.reconstruction)
  # Pixels: the decoder on the decoded latent vs the eval path's output
  # (which adds the straight-through `z + (q - z)`, equal to q to an ulp).
  _, decode, _ = c.functions(c.rate_kind, c.rate)
  tiles = np.asarray(decode(c.variables, symbols))
  np.testing.assert_allclose(tiles, ref_tiles, atol=1e-5)
  assert np.max(np.abs(image.astype(int) - ref_image.astype(int))) <= 1
  assert np.mean(image == ref_image) > 0.999


@pytest.mark.parametrize('which', ['pca', 'fsq'])
def test_file_size_is_the_coders_count(which, pca_codec, fsq_codec, photo):
  c = pca_codec if which == 'pca' else fsq_codec
  out = c.compress(photo)
  assert len(out.data) * 8 == codec_lib.HEADER_BYTES * 8 + out.payload_bits
  # And the coder is near the information content of the symbols under its
  # model: at least it, at most it + one 32-bit word of flush + 0.5 %.
  _, symbols = c.decode_symbols(out.data)
  info = 0.0
  for sel, _, p in c._streams(c.rate_kind, c.rate, len(symbols)):  # pylint: disable=protected-access
    info -= np.sum(np.log2(p[symbols[sel].reshape(-1)]))
  assert info <= out.payload_bits <= info * 1.005 + 64


def test_lower_budget_gives_a_smaller_file(pca_workdir, pca_codec, photo):
  small = codec_lib.Codec(pca_workdir, budget=BUDGET // 3, batch_size=8)
  low, high = small.compress(photo), pca_codec.compress(photo)
  assert len(low.data) < len(high.data)
  # ... and a worse reconstruction.
  assert (codec_lib.psnr_uint8(photo, low.reconstruction)
          < codec_lib.psnr_uint8(photo, high.reconstruction))
  # The same workdir decodes either: the rate is in the header.
  np.testing.assert_array_equal(pca_codec.decompress(low.data),
                                low.reconstruction)


@pytest.mark.parametrize('which', ['pca', 'fsq'])
def test_same_bytes_twice(which, pca_workdir, fsq_workdir, pca_codec,
                          fsq_codec, photo):
  c = pca_codec if which == 'pca' else fsq_codec
  assert c.compress(photo).data == c.compress(photo).data
  if which == 'fsq':  # a fresh codec reads the cached code counts
    again = codec_lib.Codec(fsq_workdir, batch_size=8)
    assert again.compress(photo).data == c.compress(photo).data
    assert os.path.exists(os.path.join(
        fsq_workdir, 'codec', f'code_counts_step{c.step}.npz'))


def test_bad_files_give_the_named_error(pca_codec, fsq_codec, photo):
  data = pca_codec.compress(photo).data
  name = 'photo.png.pcav'
  with pytest.raises(codec_lib.CodecError, match=f'{name}: truncated'):
    pca_codec.decompress(data[:-4], name)
  with pytest.raises(codec_lib.CodecError, match=f'{name}: truncated'):
    pca_codec.decompress(data[:20], name)
  corrupt = bytearray(data)
  corrupt[-3] ^= 0x10
  with pytest.raises(codec_lib.CodecError, match=f'{name}: corrupt'):
    pca_codec.decompress(bytes(corrupt), name)
  corrupt = bytearray(data)
  corrupt[15] ^= 0x01  # the image height
  with pytest.raises(codec_lib.CodecError, match=f'{name}: corrupt'):
    pca_codec.decompress(bytes(corrupt), name)
  with pytest.raises(codec_lib.CodecError, match=f'{name}: not a .pcav'):
    pca_codec.decompress(b'JFIF' + data[4:], name)
  with pytest.raises(codec_lib.CodecError, match=f'{name}: written by another'):
    fsq_codec.decompress(data, name)
  with pytest.raises(codec_lib.CodecError, match='written by another'):
    pca_codec.decompress(fsq_codec.compress(photo).data, name)


def test_gaussian_model_matches_the_quantizer():
  """The PCA entropy model is the quantizer's cell masses under N(0, 1)."""
  y = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
  for b in (1, 3, 6):
    symbols, _ = coding.quantize(y, 1.0, b)
    freq = np.bincount(np.asarray(symbols), minlength=2 ** b) / y.size
    p = coding.gaussian_symbol_probabilities(b)
    assert p.shape == (2 ** b,) and abs(p.sum() - 1) < 1e-12
    np.testing.assert_allclose(freq, p, atol=4e-3)


def test_smoothed_code_probabilities_are_positive():
  p = bits.smoothed_code_probabilities(np.array([10, 0, 5, 0]))
  np.testing.assert_allclose(p, np.array([10.5, 0.5, 5.5, 0.5]) / 17)
  assert p.min() > 0


@pytest.mark.parametrize('family,kind', [('kl', 'kl'), ('ae', 'identity')])
def test_continuous_latents_are_refused(tmp_path, family, kind):
  config = tiny_config(family)
  assert config.model.bottleneck.kind == kind
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict(),
                                                   default=str))
  with pytest.raises(codec_lib.CodecError, match=f"kind='{kind}'"):
    codec_lib.Codec(str(tmp_path))


def test_flags_the_model_cannot_use(pca_workdir, fsq_workdir):
  with pytest.raises(codec_lib.CodecError, match='give --budget'):
    codec_lib.Codec(pca_workdir)
  with pytest.raises(codec_lib.CodecError, match='--budget=100000'):
    codec_lib.Codec(pca_workdir, budget=100_000)
  with pytest.raises(codec_lib.CodecError, match='for PCA models'):
    codec_lib.Codec(fsq_workdir, bits=4)


def test_console_scripts_point_at_the_codec():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(ROOT, 'setup.cfg'))
  scripts = dict(line.split(' = ') for line in parser[
      'options.entry_points']['console_scripts'].strip().splitlines())
  for name in ('pcavae-compress', 'pcavae-decompress'):
    module, fn = scripts[name].split(':')
    assert module == 'pcavae.codec'
    assert callable(getattr(importlib.import_module(module), fn))
  assert 'constriction>=' in parser['options']['install_requires']


def test_command_line_round_trip(pca_workdir, pca_codec, photo, tmp_path):
  """compress and decompress as subprocesses, on a folder with a sub-folder,
  an unreadable file, and (for decompress) a corrupt file."""
  src, packed, out = tmp_path / 'in', tmp_path / 'packed', tmp_path / 'out'
  (src / 'sub').mkdir(parents=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(photo).save(src / 'a.png')
  Image.fromarray(photo[:17, :30]).save(src / 'sub' / 'b.png')
  (src / 'broken.jpg').write_bytes(b'not an image')
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'pcavae.codec', *args,
       f'--workdir={pca_workdir}'], capture_output=True, text=True,
      cwd=ROOT, timeout=300)
  done = run('compress', f'--input={src}', f'--output={packed}',
             f'--budget={BUDGET}')
  assert done.returncode == 0, done.stderr
  assert 'skipped broken.jpg: UnidentifiedImageError' in done.stderr
  lines = {l.split(':')[0]: l for l in done.stdout.splitlines()}
  size = os.path.getsize(packed / 'a.png.pcav')
  assert f'{size} bytes, {8 * size / (37 * 21):.4f} bpp, PSNR' in lines['a.png']
  assert 'total: 2 images compressed' in done.stdout
  # The file is the library's bytes.
  assert (packed / 'a.png.pcav').read_bytes() == pca_codec.compress(photo).data
  (packed / 'bad.png.pcav').write_bytes(
      (packed / 'a.png.pcav').read_bytes()[:-5])
  done = run('decompress', f'--input={packed}', f'--output={out}')
  assert done.returncode != 0
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 2 and 'bad.png.pcav: truncated' in errors[0]
  assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.png')) \
      == ['a.png', 'sub/b.png']
  decoded = np.asarray(Image.open(out / 'a.png'))
  np.testing.assert_array_equal(decoded, pca_codec.compress(photo)
                                .reconstruction)
  assert np.asarray(Image.open(out / 'sub' / 'b.png')).shape == (17, 21, 3)


def test_rate_distortion_experiment(pca_workdir, fsq_workdir, photo,
                                    tmp_path):
  """`experiments/rate_distortion.py` on the tiny models and two crops."""
  sys.path.insert(0, os.path.join(ROOT, 'experiments'))
  import rate_distortion  # pylint: disable=g-import-not-at-top
  images = [photo, photo[:20, :33]]
  result = rate_distortion.run(
      [('PCA', pca_workdir, (8, BUDGET)), ('FSQ', fsq_workdir, None)],
      images, ['a', 'b'], str(tmp_path), rate_distortion.Quality(lpips=False),
      gap_images=8, jpeg_qualities=(10, 90), webp_qualities=(10,),
      batch_size=8, count_images=64, echo=lambda _: None)
  rows = {r['label']: r for r in result['rows']}
  assert set(rows) == {'PCA B=8', f'PCA B={BUDGET}', 'FSQ', 'JPEG q=10',
                       'JPEG q=90', 'WebP q=10'}
  pixels = sum(im.shape[0] * im.shape[1] for im in images)
  for r in rows.values():
    assert r['bpp'] == pytest.approx(8 * sum(r['bytes']) / pixels)
  assert rows['PCA B=8']['bpp'] < rows[f'PCA B={BUDGET}']['bpp']
  assert rows['JPEG q=10']['bpp'] < rows['JPEG q=90']['bpp']
  assert rows['JPEG q=10']['psnr'] < rows['JPEG q=90']['psnr']
  # The plug-in estimate is fitted to the symbols it charges: no fixed
  # model's code can be shorter.
  for gap in result['gaps']:
    assert gap['payload_bits_per_image'] >= gap['entropy_bits_per_image']
    assert gap['file_bits_per_image'] > gap['payload_bits_per_image']
  assert (tmp_path / 'rate_distortion.png').stat().st_size > 10_000
  assert '| JPEG | q=10 |' in (tmp_path / 'results.md').read_text()
