"""The experiment scripts of docs/, run in their quick (smoke) modes as
subprocesses, with their written numbers checked against values computed
here: closed forms of the data they generate, the runs' own metrics.jsonl,
and the bit counts of the configs. The notebooks' experiments (budget sweep,
traversal) run in tests/test_notebooks.py.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT
from pcavae import evaluators
from pcavae import writers


def _run(script: str, *args: str, env=None) -> str:
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', script), *args],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, **(env or {})))
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  return proc.stdout


def _water_level(variances, rate_bits: float) -> float:
  """Reverse water-filling level theta by bisection on log theta:
  `sum_i max(0, log2(lambda_i / theta) / 2) = R`."""
  lam = np.asarray(variances, np.float64)
  lam = lam[lam > 0]
  lo, hi = math.log(lam.min()) - 2 * rate_bits - 1, math.log(lam.max())
  for _ in range(200):
    mid = (lo + hi) / 2
    rate = np.sum(np.maximum(0.0, 0.5 * np.log2(lam / math.exp(mid))))
    lo, hi = (mid, hi) if rate > rate_bits else (lo, mid)
  return math.exp((lo + hi) / 2)


def _water_dim(variances, rate_bits: float) -> int:
  """Components above the water level (those given a positive rate)."""
  theta = _water_level(variances, rate_bits)
  return int(np.sum(np.asarray(variances) > theta * (1 + 1e-9)))


def _dim99(variances) -> int:
  """Smallest k whose k largest variances hold 99% of the total."""
  v = np.sort(np.asarray(variances, np.float64))[::-1]
  return int(np.searchsorted(np.cumsum(v) / v.sum(), 0.99 - 1e-12) + 1)


def _assert_png(path: str, size) -> None:
  with Image.open(path) as im:
    assert im.size == size, (path, im.size)
    assert np.asarray(im).std() > 0  # drawn, not blank


def test_synthetic_collapse_small(tmp_path):
  out = str(tmp_path / 'collapse')
  dim, latent, q, k, steps, warm = 16, 8, 4, 16, 60, 20
  _run('synthetic_collapse.py', f'--out={out}', f'--dim={dim}',
       f'--latent_dim={latent}', f'--q={q}', f'--k={k}', f'--steps={steps}',
       f'--warmup_steps={warm}', '--eval_every=30', '--eval_samples=512',
       '--batch_size=64')
  with open(os.path.join(out, 'results.json')) as f:
    written = json.load(f)
  summary, results = written['summary'], written['results']
  # The data: variances i^-2 scaled to mean 1, at R = log2 K = 4 bits.
  lam = np.arange(1, dim + 1, dtype=np.float64) ** -2.0
  lam = lam / lam.mean()
  np.testing.assert_allclose(summary['data_variances'], lam, rtol=1e-12)
  assert summary['rate_bits'] == 4.0
  assert summary['data_dim99'] == _dim99(lam)
  theta = _water_level(lam, 4.0)
  assert summary['waterfilling_dim_data'] == _water_dim(lam, 4.0)
  np.testing.assert_allclose(summary['rd_bound_rel_mse'],
                             np.minimum(theta, lam).sum() / lam.sum(),
                             rtol=1e-6)
  with open(os.path.join(out, 'results.md')) as f:
    md = f.read()
  for method in ('vq', 'vq_warmup', 'pca'):
    history = results[method]['history']
    assert [h['step'] for h in history] == [0, 30, 60], method
    final = results[method]['final']
    assert final['rel_mse'] == history[-1]['rel_mse']
    assert f"| {final['rel_mse']:.4f} |" in md
    # Each dimension is that of the spectrum written beside it.
    assert final['z_e_dim99'] == _dim99(final['z_e_variances'])
    assert final['z_q_dim99'] == _dim99(np.square(final['z_q_spectrum']))
    assert final['waterfilling_dim_latent'] == _water_dim(
        final['z_e_variances'], 4.0)
  # The PCA output lies in a Q-dimensional affine subspace.
  assert results['pca']['final']['z_q_dim99'] <= q
  assert len(results['pca']['final']['z_q_spectrum']) == latent
  for method in ('vq', 'vq_warmup'):
    final = results[method]['final']
    assert 1 <= final['used_codes'] <= k
    assert final['used_codebook_dim99'] <= min(latent, final['used_codes'])
  _assert_png(os.path.join(out, 'synthetic_collapse.png'), (1500, 420))


def test_warmup_study_quick(tmp_path):
  root = str(tmp_path / 'warmup')
  _run('warmup_study.py', '--quick', f'--root={root}')
  with open(os.path.join(root, 'results.json')) as f:
    results = json.load(f)
  assert sorted(results) == ['pcavae', 'vq_scratch', 'vq_warmup']
  # 16 px through two stride-2 stages: 4 x 4 tokens; VQ K = 1024 is 10 bits
  # a token; PCA Q = 16 coefficients of 32 bits a token.
  assert results['vq_scratch']['latent_bits'] == 16 * 10
  assert results['vq_warmup']['latent_bits'] == 16 * 10
  assert results['pcavae']['latent_bits'] == 16 * 16 * 32
  for run, res in results.items():
    assert [h['step'] for h in res['history']] == [2, 4], run
    records = [r for r in writers.read_metrics(os.path.join(root, run))
               if 'eval/psnr' in r]
    assert res['history'][-1]['eval/psnr'] == records[-1]['eval/psnr']
    assert res['final_spectra_step'] == 4
  # The warm-up run switched its quantizer on at step 2, the others never.
  switched = {run: [r['step'] for r in writers.read_metrics(
      os.path.join(root, run)) if any(k.startswith('warmup/') for k in r)]
              for run in results}
  assert switched['vq_warmup'] and min(switched['vq_warmup']) >= 2
  assert not switched['vq_scratch'] and not switched['pcavae']
  # The water-filling prediction is that of the run's own final z_e
  # spectrum at log2 K = 10 bits.
  for run in ('vq_scratch', 'vq_warmup'):
    step, last = evaluators.load_spectra(os.path.join(root, run))[-1]
    assert step == 4
    assert results[run]['waterfilling_dim_z_e'] == _water_dim(
        np.square(last['z_e']), 10.0)
    assert results[run]['rate_bits_per_token'] == 10.0
  _assert_png(os.path.join(root, 'warmup_study.png'), (1400, 420))


def test_baselines_runlocal_quick(tmp_path):
  root = str(tmp_path / 'baselines')
  stdout = _run('baselines_runlocal.py', '--quick', f'--root={root}',
                '--families=pcavae,vqvae,fsq')
  with open(os.path.join(root, 'results.json')) as f:
    rows = {r['family']: r for r in json.load(f)}
  assert sorted(rows) == ['fsq', 'pcavae', 'vqvae']
  # Bits per image of the configs at 4 x 4 tokens: PCA Q = 16 at 32 bits,
  # VQ log2 1024, FSQ levels (8, 5, 5, 5).
  assert rows['pcavae']['bits'] == 16 * 16 * 32
  assert rows['vqvae']['bits'] == 16 * 10
  assert rows['fsq']['bits'] == math.ceil(16 * math.log2(8 * 5 * 5 * 5))
  with open(os.path.join(root, 'results.md')) as f:
    md = f.read()
  for family, row in rows.items():
    assert row['steps'] == 2 and row['num_images'] == 16
    assert row['lpips'] is None  # --quick turns LPIPS off
    last = [r for r in writers.read_metrics(os.path.join(root, family))
            if 'eval/psnr' in r][-1]
    assert last['step'] == 2
    assert row['psnr'] == last['eval/psnr']
    assert row['ssim'] == last['eval/ssim']
    assert row['usage'] == last.get('eval/codebook_usage')
    assert f"| {row['name']} | {row['psnr']:.2f} | {row['ssim']:.3f} |" in md
    assert json.dumps(row) in stdout
  assert rows['pcavae']['usage'] is None
  assert rows['vqvae']['usage'] is not None


def test_metrics_timing_quick(tmp_path):
  path = str(tmp_path / 'timing.json')
  # An empty cache: no Inception weights, so that part is skipped (it needs
  # the one-time conversion; tests/test_fid.py covers it).
  _run('metrics_timing.py', '--quick', f'--json={path}',
       env={'PCAVAE_CACHE': str(tmp_path / 'empty_cache')})
  with open(path) as f:
    rows = {r['metric']: r for r in json.load(f)}
  assert sorted(rows) == ['lpips_alex', 'lpips_vgg']
  for r in rows.values():
    assert (r['images'], r['size'], r['batch']) == (2, 32, 2)


def test_pca_profile_quick(tmp_path):
  """experiments/pca_profile.py (the per-part profile of issue 19) runs as a
  process; its multiply-add counts are the shapes' closed forms, and both
  re-orthonormalisations it times leave an orthonormal basis."""
  out = _run('pca_profile.py', '--quick', f'--out={tmp_path}')
  assert 'orthonormalize_qr' in out
  with open(tmp_path / 'pca_profile.jsonl') as f:
    rows = {r['measurement']: r for r in map(json.loads, f)}
  l, n, d, q = 16, 16, 64, 64
  spectrum = rows.pop('gram_spectrum_after_step')
  assert 0 < spectrum['min'] < 1 < spectrum['max']     # the step moved it
  assert set(rows) == {
      'products_with_basis', 'sanger_step', 'sanger_step_raw',
      'sanger_step_direct', 'gram', 'cholesky_inverse', 'lapack_cholesky',
      'lapack_triangular_solve', 'orthonormalize_qr', 'orthonormalize',
      'product'}
  assert rows['gram']['gmac'] == rows['product']['gmac'] == l * d * q * q / 1e9
  assert rows['products_with_basis']['gmac'] == 4 * l * n * d * q / 1e9
  for name in ('orthonormalize_qr', 'orthonormalize'):
    assert rows[name]['orthonormality_error'] < 1e-5
  assert all(r['wall_ms'] > 0 and r['cpu_ms'] >= 0 for r in rows.values())
  assert (tmp_path / 'pca_profile.md').read_text().count('\n|') == 13


def test_throughput_train_only_and_options(tmp_path):
  """experiments/throughput.py as docs/speed.md's memory and share commands
  run it: `--train_only` times the train steps alone (no reconstruction or
  maintenance programs), `pca:reference:q51` is the OPCA-VAE rule at Q = 51
  and is compared with the identity at the same convs."""
  _run('throughput.py', '--sizes=16', '--kinds=pca:reference:q51,identity',
       '--steps=1', '--rounds=1', '--train_only', f'--out={tmp_path}')
  with open(tmp_path / 'throughput.jsonl') as f:
    records = [json.loads(line) for line in f]
  names = [r['measurement'] for r in records]
  # A record per step as it is compiled, then the timings.
  assert names == ['compile/pca:reference:q51', 'compile/identity',
                   'train/pca:reference:q51', 'train/identity',
                   'bottleneck_share/pca:reference:q51', 'memory']
  compiles, trains = records[:2], records[2:4]
  assert [r['compile_s'] for r in compiles] == [r['compile_s']
                                                for r in trains]
  assert all(r['resolution'] == 16 and r['steps_timed'] == 1
             and r['step_ms'] > 0 for r in trains)
  # Q = 51 of D = 256: the PCA step does more than the identity's.
  assert trains[0]['flops_per_step'] > trains[1]['flops_per_step']
  assert records[5]['peak_bytes'] > 0


def test_gpu_check_quick(tmp_path):
  """`gpu_check.py --quick` on the CPU: every part runs as a process and the
  report holds their values: the precision tests passed, the tiny training
  run's PCA figures and first-step latency, a restart that compiles nothing,
  a throughput record and the PCA profile table."""
  out = tmp_path / 'gc'
  _run('gpu_check.py', '--quick', f'--out={out}')
  with open(out / 'report.json') as f:
    report = json.load(f)
  assert report['environment']['platform'] == 'cpu'
  assert report['tests']['rc'] == 0
  assert any(l.startswith('3 passed') for l in report['tests']['summary'])
  cold, warm = report['train']['cold'], report['train']['warm']
  assert set(report['train']) == {'cold', 'warm'}
  for run in (cold, warm):
    assert run['rc'] == 0
    assert run['metrics']['first_step_seconds'] > 0
    assert 0 < run['metrics']['pca/captured_variance'] <= 1 + 1e-6
  loaded, compiled = cold['programs_loaded_compiled']
  assert loaded == 0 and compiled > 0
  # The restart loads every program the first run compiled.
  assert warm['programs_loaded_compiled'] == [compiled, 0]
  recs = report['throughput']['tp_quick']['records']
  train = [r for r in recs if r['measurement'] == 'train/pca']
  assert len(train) == 1 and train[0]['batch'] == 2
  np.testing.assert_allclose(train[0]['images_per_s'],
                             2e3 / train[0]['step_ms'], rtol=1e-9)
  assert [r['measurement'] for r in recs if 'compile_s' in r][0] == (
      'compile/pca')
  assert report['pca_profile']['rc'] == 0
  md = (out / 'report.md').read_text()
  assert '| cold: empty compilation cache | ok |' in md
  assert 'orthonormalize_qr' in md      # the profile's table


def test_generation_quick(tmp_path, inception_weights):
  """`generation.py --quick` (smoke flags) runs every quick cell through a
  prior, samples, the Inception metrics and the interpolation; the written
  numbers are checked against the cells' bit counts, the tiny prior's
  parameter count in closed form, and the metrics' definitions."""
  del inception_weights  # sets PCAVAE_CACHE for the subprocess
  out = tmp_path / 'gen'
  _run('generation.py', '--quick', f'--out={out}', '--steps=20',
       '--prior_steps=10', '--prior_size=tiny', '--num=8', '--pairs=1',
       '--eval_images=16')
  with open(out / 'results.json') as f:
    results = json.load(f)
  rows = {r['cell']: r for r in results['rows']}
  assert sorted(rows) == sorted(['vq_4x4_k1024', 'fsq_4x4_l8555',
                                 'lfq_4x4_d10', 'pca_4x4_q50',
                                 'pca_global_q100', 'kl_4x4_c5'])
  # Equal bits: 16 locations x 10 bits, 5 x 16 KL coefficients x 2 bits,
  # the PCA budget exactly; FSQ's 1000 codes are log2(1000) bits.
  for cell in ('vq_4x4_k1024', 'lfq_4x4_d10', 'pca_4x4_q50',
               'pca_global_q100', 'kl_4x4_c5'):
    assert rows[cell]['bits_per_image'] == 160, cell
  assert math.isclose(rows['fsq_4x4_l8555']['bits_per_image'],
                      16 * math.log2(1000), rel_tol=1e-12)
  assert rows['vq_4x4_k1024']['sequence_length'] == 16
  # LFQ at d = 10 sends a code index per location (2^10 codes), as VQ.
  assert rows['lfq_4x4_d10']['sequence_length'] == 16
  assert rows['lfq_4x4_d10']['largest_alphabet'] == 1024
  assert rows['kl_4x4_c5']['sequence_length'] == 80
  assert rows['kl_4x4_c5']['largest_alphabet'] == 4
  # tiny prior (32 wide, 1 block, MLP 4x): embeddings, position, block,
  # final norm, head.
  d, v, length = 32, 1024, 16
  block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  want = (v + 1) * d + length * d + block + 2 * d + d * v + v
  assert rows['vq_4x4_k1024']['prior_params'] == want
  for r in rows.values():
    # 8 samples against 8 images: precision and recall count samples.
    for key in ('precision', 'recall', 'recon_precision', 'recon_recall'):
      assert float(r[key] * 8).is_integer(), (r['cell'], key, r[key])
    assert r['gfid'] > 0 and r['rfid'] > 0
  # Coefficient variance: per PCA component (Q = 16 of D = 32 at each 4x4
  # location; 64 of the global N = 64) and per KL channel; none for codes.
  assert len(rows['pca_4x4_q50']['variance_share']) == 16
  assert len(rows['pca_global_q100']['variance_share']) == 64
  assert len(rows['kl_4x4_c5']['variance_share']) == 5
  assert rows['vq_4x4_k1024']['variance_share'] is None
  interp = results['interpolation']
  assert sorted(interp) == ['pca_4x4_q50 160 bits', 'pca_4x4_q50 float',
                            'vq_4x4_k1024']
  for v in interp.values():
    assert v['lpips_step_max'] >= v['lpips_step_mean'] >= 0
    assert v['num_pairs'] == 1
    assert v['detour'] >= 1 - 1e-6 or v['lpips_step_mean'] == 0
  # The float PCA path moves continuously, so every step is positive.
  assert interp['pca_4x4_q50 float']['lpips_step_mean'] > 0
  assert interp['pca_4x4_q50 float']['evenness'] >= 1
  for name in ('samples.png', 'interpolation.png', 'variance_share.png',
               'samples/vq_4x4_k1024.png'):
    assert (out / name).stat().st_size > 0
  text = (out / 'results.md').read_text()
  assert '| cell |' in text and 'Interpolation' in text
