"""What users really have, through the command lines as a user types them:
`pcavae-compress`, `pcavae-decompress` and `pcavae-reconstruct` on a folder
of odd, broken and hostile files, and on output paths that cannot be
written. The one input/output contract (`pcavae.imageio`) holds for all
three: every file named, no traceback, a non-zero exit when nothing is
written."""

import csv
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

from conftest import ROOT
from pcavae import codec as codec_lib

BUDGET = 24


def _run(*args):
  return subprocess.run([sys.executable, '-m', *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)


def _rgb(h, w, seed=0):
  y, x = np.mgrid[:h, :w]
  base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                   (x + y) % 256], -1)
  noise = np.random.default_rng(seed).integers(0, 30, (h, w, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def odd_folder(tmp_path_factory):
  """Images of every kind a user has, and files that are not images.

  Returns `(folder, {name: (h, w) as decoded upright})`."""
  root = tmp_path_factory.mktemp('odd')
  Image.fromarray(_rgb(20, 24)).save(root / 'X.png')
  Image.fromarray(_rgb(18, 22, 1)).save(root / 'X.jpg', quality=95)
  Image.fromarray(_rgb(17, 19, 2)).save(root / 'w.webp')
  Image.fromarray(_rgb(16, 21, 3)).save(root / 'b.bmp')
  Image.fromarray(_rgb(19, 17, 4)).save(root / 't.tif')
  frames = [Image.fromarray(_rgb(15, 18, s)).convert('P') for s in (5, 6)]
  frames[0].save(root / 'anim.gif', save_all=True, append_images=frames[1:])
  # A phone's portrait photo: stored 20 high x 36 wide, tagged "rotate 90
  # clockwise" (orientation 6), shown 36 high x 20 wide.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(_rgb(20, 36, 7)).save(root / 'portrait.jpg', exif=exif,
                                         quality=95)
  Image.fromarray((_rgb(17, 18, 8)[..., 0].astype(np.uint16) * 257)).save(
      root / 'deep16.png')
  Image.fromarray(_rgb(16, 16, 9)).convert('CMYK').save(root / 'cmyk.jpg')
  data = (root / 'X.jpg').read_bytes()
  (root / 'truncated.jpg').write_bytes(data[:len(data) // 2])
  (root / 'zero.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image')
  # A decompression bomb: 200 Mpx in a few KB, over the codec's 64 Mpx
  # and Pillow's own limit (reconstruct's).
  Image.new('1', (20_000, 10_000)).save(root / 'bomb.png')
  sizes = {'X.png': (20, 24), 'X.jpg': (18, 22), 'w.webp': (17, 19),
           'b.bmp': (16, 21), 't.tif': (19, 17), 'anim.gif': (15, 18),
           'portrait.jpg': (36, 20), 'deep16.png': (17, 18),
           'cmyk.jpg': (16, 16)}
  return root, sizes


@pytest.fixture(scope='module')
def compressed(codec_pca_workdir, odd_folder, tmp_path_factory):
  """`python -m pcavae.codec compress` of the odd folder."""
  root, _ = odd_folder
  out = tmp_path_factory.mktemp('packed')
  done = _run('pcavae.codec', 'compress', f'--workdir={codec_pca_workdir}',
              f'--input={root}', f'--output={out}', f'--budget={BUDGET}',
              '--batch_size=8')
  return out, done


def test_compress_reads_every_format_and_names_every_skip(odd_folder,
                                                          compressed):
  _, sizes = odd_folder
  out, done = compressed
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr
  written = sorted(p.name for p in out.iterdir())
  assert written == sorted(name + '.pcav' for name in sizes)
  skips = {l.split(':')[0][len('skipped '):]: l
           for l in done.stderr.splitlines() if l.startswith('skipped ')}
  assert sorted(skips) == ['bomb.png', 'notes.txt', 'truncated.jpg',
                           'zero.png']
  assert 'not an image file (extension .txt)' in skips['notes.txt']
  assert '200,000,000 pixels, over the limit' in skips['bomb.png']
  assert 'UnidentifiedImageError' in skips['zero.png']
  assert 'OSError' in skips['truncated.jpg']
  assert 'note anim.gif: first of 2 frames' in done.stderr.splitlines()
  assert 'total: 9 images compressed, 4 skipped, 0 failed' in done.stdout
  for name, (h, w) in sizes.items():  # upright sizes, in each header
    header, _ = codec_lib.unpack_header(
        (out / (name + '.pcav')).read_bytes(), name)
    assert (header.height, header.width) == (h, w), name


def _header_only(data, side):
  head = bytearray(data[:codec_lib.HEADER_BYTES])
  struct.pack_into('<II', head, 14, side, side)  # height, width
  struct.pack_into('<I', head, 28, 0)  # payload words
  head = bytes(head[:-4])
  return head + struct.pack('<I', zlib.crc32(head))


def test_decompress_keeps_names_apart_and_goes_on_past_hostile_files(
    codec_pca_workdir, odd_folder, compressed, tmp_path):
  _, sizes = odd_folder
  packed, _ = compressed
  src = tmp_path / 'in'
  src.mkdir()
  for p in packed.iterdir():
    (src / p.name).write_bytes(p.read_bytes())
  good = (packed / 'X.png.pcav').read_bytes()
  (src / 'huge.pcav').write_bytes(_header_only(good, 12_000))
  (src / 'claims.pcav').write_bytes(_header_only(good, 5_000))
  (src / 'notes.pcav').write_text('not a .pcav file, just some text.\n' * 3)
  out = tmp_path / 'out'
  done = _run('pcavae.codec', 'decompress', f'--workdir={codec_pca_workdir}',
              f'--input={src}', f'--output={out}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 4, done.stderr  # three files, then the summary
  assert f'{src / "huge.pcav"}: 12000x12000 is 144,000,000 pixels' in \
      errors[1]
  assert f'{src / "claims.pcav"}: 0 payload words, but' in errors[0]
  assert f'{src / "notes.pcav"}: not a .pcav file' in errors[2]
  assert errors[3] == 'error: 3 file(s) could not be decompressed ' \
                      '(named above).'
  assert 'total: 9 images decompressed, 0 skipped, 3 failed' in done.stdout
  # X.jpg.pcav and X.png.pcav: two outputs, neither overwriting the other.
  names = {n[:-len('.pcav')] for n in os.listdir(packed)}
  expected = {('X.jpg.png' if n == 'X.jpg' else 'X.png.png' if n == 'X.png'
               else os.path.splitext(n)[0] + '.png'): sizes[n] for n in names}
  assert sorted(os.listdir(out)) == sorted(expected)
  for name, (h, w) in expected.items():
    assert np.asarray(Image.open(out / name)).shape == (h, w, 3), name


def test_nothing_to_write_exits_non_zero(codec_pca_workdir, odd_folder,
                                         tmp_path):
  bad = tmp_path / 'bad'
  bad.mkdir()
  root, _ = odd_folder
  for name in ('truncated.jpg', 'zero.png', 'notes.txt'):
    (bad / name).write_bytes((root / name).read_bytes())
  done = _run('pcavae.codec', 'compress', f'--workdir={codec_pca_workdir}',
              f'--input={bad}', f'--output={tmp_path / "o"}',
              f'--budget={BUDGET}')
  assert done.returncode == 1 and 'Traceback' not in done.stderr
  assert 'total: 0 images compressed, 3 skipped, 0 failed' in done.stdout
  assert done.stderr.strip().splitlines()[-1] == (
      f'error: nothing was compressed under --input={bad} (3 skipped, named '
      'above).')


def test_output_problems_are_one_line(codec_pca_workdir, odd_folder,
                                      tmp_path):
  root, _ = odd_folder
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  cases = [
      (('pcavae.codec', 'compress', f'--output={a_file}',
        f'--budget={BUDGET}'),
       f'error: Cannot create --output={a_file}: File exists.'),
      (('pcavae.codec', 'decompress', f'--output={a_file}'),
       f'error: Cannot create --output={a_file}: File exists.'),
      (('pcavae.codec', 'compress', '--output=/proc/pcavae_no/out',
        f'--budget={BUDGET}'),
       'error: Cannot create --output=/proc/pcavae_no/out: No such file or '
       'directory.'),
      (('pcavae.codec', 'compress', f'--output={tmp_path / "o"}',
        '--batch_size=0'),
       'error: --batch_size=0 must be positive.'),
      (('pcavae.codec', 'decompress', f'--output={tmp_path / "o"}',
        '--max_pixels=0'),
       'error: --max_pixels=0 must be positive.'),
      (('pcavae.reconstruct', f'--output={a_file}'),
       f'Cannot create --output={a_file}: File exists.'),
      (('pcavae.reconstruct', f'--output={tmp_path / "o"}',
        '--batch_size=0'),
       '--batch_size=0 must be positive.'),
      (('pcavae.reconstruct', f'--output={tmp_path / "o2"}',
        '--overlap=16'),
       "pcavae.reconstruct: --overlap=16 must be less than the run's "
       'resolution, 16 px.'),
  ]
  for args, last in cases:
    done = _run(*args, f'--workdir={codec_pca_workdir}', f'--input={root}')
    assert done.returncode != 0, args
    assert 'Traceback' not in done.stderr, (args, done.stderr[-2000:])
    assert done.stderr.strip().splitlines()[-1] == last, (args,
                                                         done.stderr[-500:])
  assert not (tmp_path / 'o').exists()


def test_reconstruct_shares_the_contract(codec_pca_workdir, odd_folder,
                                         tmp_path):
  """Every format, upright, first frame noted, and a PNG path that is a
  folder: that image skipped with the reason, the rest written, and
  metrics.csv holding them. Tiles overlap by 8 px, cross-faded."""
  root, sizes = odd_folder
  out = tmp_path / 'out'
  (out / 'w.png').mkdir(parents=True)  # where w.webp's PNG would go
  done = _run('pcavae.reconstruct', f'--workdir={codec_pca_workdir}',
              f'--input={root}', f'--output={out}', '--nolpips',
              '--noprogress', '--batch_size=8', '--overlap=8')
  assert done.returncode == 0 and 'Traceback' not in done.stderr
  skips = {os.path.basename(l.split(':')[0][len('skipped '):]): l
           for l in done.stderr.splitlines() if l.startswith('skipped ')}
  assert sorted(skips) == ['bomb.png', 'notes.txt', 'truncated.jpg',
                           'w.webp', 'zero.png']
  assert f'cannot write {out / "w.png"}: Is a directory' in skips['w.webp']
  assert 'DecompressionBombError' in skips['bomb.png']
  assert f'note {root / "anim.gif"}: first of 2 frames' in done.stderr
  assert done.stdout.splitlines()[-1].startswith('wrote 8, skipped 5: ')
  with open(out / 'metrics.csv') as f:
    rows = {r['input']: r for r in csv.DictReader(f)}
  assert sorted(rows) == sorted(set(sizes) - {'w.webp'})
  for name, row in rows.items():
    assert (int(row['height']), int(row['width'])) == sizes[name], name
  # 36 x 20 in 16 px tiles 8 px apart: 4 down, 2 across (without overlap,
  # 3 x 2).
  assert rows['portrait.jpg']['tiles'] == '8'
  assert (np.asarray(Image.open(out / 'portrait.png')).shape
          == (36, 20, 3))
  assert (out / 'X.jpg.png').exists() and (out / 'X.png.png').exists()
