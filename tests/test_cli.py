"""Every entry point the README names, run as a user runs it: a real
subprocess on one tiny run trained once for the module; and every command
that README.md and docs/*.md show, parsed by its program.

`python -m pcavae.main` trains 2 steps, the console script `pcavae-train`
resumes it to 4; `python -m pcavae.reconstruct` and `pcavae-reconstruct`
reconstruct a folder of mixed files from it. (Console scripts live beside
the interpreter; PYTHONPATH points them at this checkout.)
"""

import csv
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from skimage.metrics import structural_similarity

from conftest import ROOT
import doc_commands

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


def _run(cmd, env=None, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        cwd=ROOT, env=env or _env(), **kw)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny run: 2 steps by `python -m pcavae.main`, resumed to 4 by
  `pcavae-train` with one data worker process; returns (workdir, both
  CompletedProcesses)."""
  base = tmp_path_factory.mktemp('cli')
  workdir = str(base / 'run')
  # As on a fresh machine: no Inception weights (rFID is asked for), and the
  # compilation cache on, in a folder of its own.
  env = dict(_env(), PCAVAE_CACHE=str(base / 'cache'),
             PCAVAE_COMPILATION_CACHE='1',
             JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'))
  tiny = TINY + ['--config.eval.rfid_num_images=4']
  first = _run([sys.executable, '-m', 'pcavae.main', CONFIG,
                f'--workdir={workdir}', '--config.num_train_steps=2'] + tiny,
               env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  # The resumed half reads with a grain worker process (the stream does not
  # depend on the count, so the run resumes).
  second = _run(_script('pcavae-train') + [
      CONFIG, f'--workdir={workdir}', '--config.num_train_steps=4',
      '--config.data_workers=1'] + tiny, env=env)
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


def test_fresh_machine_trains_without_inception_and_restart_loads(run_dir):
  """Missing Inception weights leave rFID out with one line naming the
  conversion command; the resumed process loads programs the first one put
  in the compilation cache."""
  _, first, second = run_dir
  counts = []
  for out in (first, second):
    lines = [l for l in out.stderr.splitlines() if 'rFID left out' in l]
    assert len(lines) == 1, out.stderr[-2000:]
    assert 'python -m pcavae.metrics.convert_inception' in lines[0]
    found = re.search(r'(\d+) programs loaded, (\d+) compiled', out.stderr)
    assert found, out.stderr[-2000:]
    counts.append((int(found[1]), int(found[2])))
    assert 'first step done in' in out.stderr
  assert counts[0][0] == 0 and counts[0][1] > 0
  assert counts[1][0] > 0


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
    # PSNR of the written PNG against the file as PIL decodes it to RGB.
    with Image.open(os.path.join(root, row['input'])) as original:
      x = np.asarray(original.convert('RGB'), np.float64)
    y = np.asarray(Image.open(out / name), np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(np.square(x - y)))
    assert float(row['psnr']) == pytest.approx(psnr, rel=2e-5), name
  assert rows['three.png']['ssim'] == ''  # under SSIM's 11 px window
  # SSIM (Gaussian 11 x 11 window, sigma 1.5, on [0, 1]) of big.jpg.
  with Image.open(root / 'big.jpg') as original:
    x = np.asarray(original.convert('RGB'), np.float64) / 255
  y = np.asarray(Image.open(out / 'big.png'), np.float64) / 255
  ssim = structural_similarity(x, y, channel_axis=-1, data_range=1.0,
                               gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
  assert float(rows['big.png']['ssim']) == pytest.approx(ssim, abs=1e-4)
  assert float(rows['big.png']['lpips_alex']) > 0  # 48x40: LPIPS allowed
  assert rows['gray.png']['lpips_alex'] == ''  # 20 px: under AlexNet's 32
  # 48 x 40 in 16 px tiles overlapping by 4 px (the default, a quarter):
  # 12 px apart, 4 down and 3 across.
  assert int(rows['big.png']['tiles']) == 4 * 3


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


# -- every command README.md and docs/*.md show ------------------------------

DOC_COMMANDS = doc_commands.documented_commands(ROOT)


def _console_scripts():
  """`{script: module}` of this package's console scripts."""
  scripts = importlib.metadata.distribution('pcavae').entry_points
  return {e.name: e.value.split(':')[0] for e in scripts
          if e.group == 'console_scripts'}


def _program(command):
  """`(program, arguments)`: a module, a script path, or `make`."""
  words = shlex.split(command)
  if words[0] in ('python', 'python3'):
    if words[1] == '-m':
      return words[2], words[3:]
    return os.path.join(ROOT, words[1]), words[2:]
  if words[0] == 'make':
    return 'make', words[1:]
  return _console_scripts()[words[0]], words[1:]


def _by_program():
  out = {}
  for page, command in DOC_COMMANDS:
    program, args = _program(command)
    out.setdefault(program, []).append((page, command, args))
  return out


def test_the_pages_commands_are_found():
  """Commands from each kind of place: fenced and indented blocks, a
  wrapped inline span, a command inside another, README and docs/."""
  found = {command: page for page, command in DOC_COMMANDS}
  assert found['make run'] == 'README.md'
  assert found['python -m pcavae.main --config=configs/vqvae.py:runlocal,'
               'warmup=1200 --config.model.bottleneck.warmup_auto=True '
               '--workdir=workdirs/vq_auto'] == 'docs/collapse_and_warmup.md'
  assert found['python experiments/rate_distortion.py --quick '
               '--figure=docs/rate_distortion.png'] == 'docs/bits_and_codec.md'
  assert found['python -m pcavae.main --config=configs/pcavae.py:setting='
               'spatial16,q=51 --config.batch_size=512 '
               '--workdir=/mnt/shared/runs/pca16'] == 'docs/usage.md'
  pages = {page for page, _ in DOC_COMMANDS}
  docs = {'docs/' + f for f in os.listdir(os.path.join(ROOT, 'docs'))
          if f.endswith('.md')}
  assert pages == {'README.md'} | docs, docs - pages


def test_documented_make_targets_exist():
  with open(os.path.join(ROOT, 'Makefile')) as f:
    targets = set(re.findall(r'^([\w.-]+):', f.read(), re.M))
  for page, command, args in _by_program().get('make', []):
    assert set(args) <= targets, (page, command)


@pytest.mark.parametrize('program', sorted(p for p in _by_program()
                                           if p != 'make'),
                         ids=lambda p: os.path.relpath(p, ROOT)
                         if os.path.isabs(p) else p)
def test_documented_commands_parse(program):
  """Every documented command of `program` parses as the program parses
  it, its config loaded and validated (tests/doc_commands.py: one process
  per program, nothing trained)."""
  cases = _by_program()[program]
  res = _run([sys.executable, os.path.join(ROOT, 'tests', 'doc_commands.py'),
              program], input=json.dumps([args for _, _, args in cases]))
  assert res.returncode == 0, res.stderr[-3000:]
  results = [json.loads(line) for line in res.stdout.splitlines()
             if line.startswith('{')]
  assert len(results) == len(cases), res.stdout[-3000:]
  failed = [f'{page}: {command}\n  {r["error"]}'
            for (page, command, _), r in zip(cases, results) if not r['ok']]
  assert not failed, '\n'.join(failed)
