"""Every entry point the README names, run as a user runs it: a real
subprocess on one tiny run trained once for the module.

`python -m pcavae.main` trains 2 steps, the console script `pcavae-train`
resumes it to 4; `python -m pcavae.reconstruct` and `pcavae-reconstruct`
reconstruct a folder of mixed files from it. (Console scripts live beside
the interpreter; PYTHONPATH points them at this checkout.)
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import ROOT

TINY = ['--config.resolution=16', '--config.model.channels=(8,16)',
        '--config.model.latent_dim=8', '--config.model.num_res_layers=1',
        '--config.model.bottleneck.num_components=4',
        '--config.batch_size=4', '--config.eval.batch_size=4',
        '--config.eval.num_examples=8', '--config.eval.spectra_num_images=0',
        '--config.log_every_steps=1', '--config.tensorboard=False',
        # A typed placeholder (was a bare None): settable by flag.
        '--config.model.bottleneck.learning_rate=0.05']
CONFIG = '--config=' + os.path.join(ROOT, 'configs', 'pcavae.py') + ':runlocal'


def _env():
  path = os.environ.get('PYTHONPATH')
  return dict(os.environ,
              PYTHONPATH=ROOT + (os.pathsep + path if path else ''))


def _script(name):
  path = os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    pytest.fail(f'console script {name} not installed beside '
                f'{sys.executable}: pip install -e .')
  return [path]


def _run(cmd, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        cwd=ROOT, env=_env(), **kw)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny run: 2 steps by `python -m pcavae.main`, resumed to 4 by
  `pcavae-train` with one data worker process; returns (workdir, both
  CompletedProcesses)."""
  workdir = str(tmp_path_factory.mktemp('cli') / 'run')
  first = _run([sys.executable, '-m', 'pcavae.main', CONFIG,
                f'--workdir={workdir}', '--config.num_train_steps=2'] + TINY)
  assert first.returncode == 0, first.stderr[-3000:]
  # The resumed half reads with a grain worker process (the stream does not
  # depend on the count, so the run resumes).
  second = _run(_script('pcavae-train') + [
      CONFIG, f'--workdir={workdir}', '--config.num_train_steps=4',
      '--config.data_workers=1'] + TINY)
  assert second.returncode == 0, second.stderr[-3000:]
  return workdir, first, second


@pytest.fixture(scope='module')
def mixed_folder(tmp_path_factory):
  """Good images of every mode and odd sizes, in a subfolder too, beside a
  truncated JPEG, a text file and a text file named .jpg."""
  root = tmp_path_factory.mktemp('photos')
  (root / 'sub').mkdir()
  rng = np.random.default_rng(0)

  def rgb(h, w):
    return rng.integers(0, 256, (h, w, 3), np.uint8)

  Image.fromarray(rgb(40, 30)).save(root / 'a.png')
  Image.fromarray(rgb(50, 45)).save(root / 'sub' / 'b.jpg', quality=95)
  Image.fromarray(rgb(3, 3)).save(root / 'three.png')
  Image.fromarray(rng.integers(0, 256, (20, 33), np.uint8)).save(
      root / 'gray.png')
  Image.fromarray(rng.integers(0, 256, (17, 16, 4), np.uint8)).save(
      root / 'rgba.png')
  Image.fromarray(rgb(24, 24)).convert('P').save(root / 'palette.png')
  Image.fromarray(rgb(48, 40)).save(root / 'big.jpg', quality=90)
  data = (root / 'big.jpg').read_bytes()
  (root / 'truncated.jpg').write_bytes(data[:len(data) // 2])
  (root / 'notes.txt').write_text('not an image')
  (root / 'fake.jpg').write_text('not a jpeg either')
  sizes = {'a.png': (40, 30), 'sub/b.png': (50, 45), 'three.png': (3, 3),
           'gray.png': (20, 33), 'rgba.png': (17, 16),
           'palette.png': (24, 24), 'big.png': (48, 40)}
  return root, sizes


def test_python_m_main_trains_and_pcavae_train_resumes(run_dir):
  workdir, first, second = run_dir
  for out, steps in ((first, 2), (second, 4)):
    assert json.loads(out.stdout.splitlines()[0])['step'] == steps
    assert f'Outputs in {workdir}' in out.stdout
    assert 'steps/s' in out.stderr and 'ETA' in out.stderr
  assert 'Resumed from the checkpoint at step 2' in second.stderr
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['bottleneck']['learning_rate'] == 0.05


def test_reconstruct_writes_every_readable_image_at_its_size(
    run_dir, mixed_folder, tmp_path):
  workdir = run_dir[0]
  root, sizes = mixed_folder
  out = tmp_path / 'out'
  res = _run([sys.executable, '-m', 'pcavae.reconstruct',
              f'--workdir={workdir}', f'--input={root}', f'--output={out}',
              '--batch_size=4'])
  assert res.returncode == 0, res.stderr[-3000:]
  lines = res.stdout.splitlines()
  assert lines[-1].startswith('wrote 7, skipped 3: ')
  skipped = {os.path.basename(l.split(':')[0].split(' ', 1)[1]): l
             for l in res.stderr.splitlines() if l.startswith('skipped ')}
  assert sorted(skipped) == ['fake.jpg', 'notes.txt', 'truncated.jpg']
  assert 'truncated' in skipped['truncated.jpg']
  assert 'cannot identify image file' in skipped['fake.jpg']
  assert 'not an image file' in skipped['notes.txt']
  assert 'images/s' in res.stderr and 'ETA' in res.stderr
  assert '9/9 images' in res.stderr  # every image-named file, bad ones too
  for name, (h, w) in sizes.items():
    image = np.asarray(Image.open(out / name))
    assert image.shape == (h, w, 3) and image.dtype == np.uint8, name
  with open(out / 'metrics.csv') as f:
    rows = {r['output']: r for r in csv.DictReader(f)}
  assert sorted(rows) == sorted(sizes)
  for name, row in rows.items():
    assert (int(row['height']), int(row['width'])) == sizes[name]
    assert 0 < float(row['psnr']) < 100
  assert rows['three.png']['ssim'] == ''  # under SSIM's 11 px window
  assert -1 <= float(rows['big.png']['ssim']) <= 1
  assert float(rows['big.png']['lpips_alex']) > 0  # 48x40: LPIPS allowed
  assert rows['gray.png']['lpips_alex'] == ''  # 20 px: under AlexNet's 32
  assert int(rows['big.png']['tiles']) == 3 * 3


def test_reconstruct_center_crop_side_by_side(run_dir, mixed_folder,
                                              tmp_path):
  root, _ = mixed_folder
  out = tmp_path / 'crop'
  res = _run(_script('pcavae-reconstruct') + [
      f'--workdir={run_dir[0]}', f'--input={root / "sub"}', f'--output={out}',
      '--nofull_size', '--side_by_side', '--nolpips', '--noprogress'])
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.splitlines()[-1].startswith('wrote 1, skipped 0: ')
  assert np.asarray(Image.open(out / 'b.png')).shape == (16, 32, 3)
  assert 'images/s' not in res.stderr
  with open(out / 'metrics.csv') as f:
    (row,) = list(csv.DictReader(f))
  assert (row['height'], row['width'], row['tiles']) == ('16', '16', '1')


def test_reconstruct_of_nothing_readable_fails_with_a_message(
    run_dir, mixed_folder, tmp_path):
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'x.jpg').write_bytes(
      (mixed_folder[0] / 'truncated.jpg').read_bytes())
  res = _run([sys.executable, '-m', 'pcavae.reconstruct',
              f'--workdir={run_dir[0]}', f'--input={bad}',
              f'--output={tmp_path / "o"}', '--noprogress'])
  assert res.returncode != 0
  assert 'wrote 0, skipped 1' in res.stdout
  assert f'skipped {bad / "x.jpg"}: ' in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert 'no image could be read' in last and 'Traceback' not in res.stderr


def test_bad_paths_are_one_line_errors(tmp_path):
  res = _run([sys.executable, '-m', 'pcavae.reconstruct',
              f'--workdir={tmp_path / "no_run"}', f'--input={tmp_path}',
              f'--output={tmp_path / "o"}'])
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert 'config.json not found' in res.stderr.strip().splitlines()[-1]
  res = _run([sys.executable, '-m', 'pcavae.main', CONFIG,
              '--workdir=/proc/pcavae_cannot_be_here/run'] + TINY)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1] == (
      'Cannot create --workdir=/proc/pcavae_cannot_be_here/run: No such file '
      'or directory.')
  # A bad key: one line naming it, and no workdir left behind.
  res = _run([sys.executable, '-m', 'pcavae.main', CONFIG,
              f'--workdir={tmp_path / "bad"}'] + TINY +
             ['--config.model.bottleneck.num_components=99'])
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith('Invalid config: config.model.bottleneck.'
                         'num_components=99 (Q) exceeds'), last
  assert not (tmp_path / 'bad').exists()
