"""Scale-out: 8 forced CPU devices vs 1, two processes on loopback with
jax.distributed (gloo CPU collectives) vs one, and checkpoints moving between
device counts. Each run is a real subprocess (the device count is fixed when
JAX starts); the comparison restores the checkpoints here, on one device.

Tolerance: sharding the batch changes the order of floating-point sums in the
batch means and gradient reductions, so results agree to rounding, not bit for
bit: after 5 Adam steps the largest difference measured was 1.6e-7 absolute
(1.3e-6 relative); the tests allow 1e-5 absolute.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from conftest import ROOT
from pcavae import train

WORKER = os.path.join(ROOT, 'tests', 'distributed_worker.py')
ATOL = 1e-5


def _run(workdir, mesh_data, steps, devices, extra=(), env_extra=None):
  env = dict(os.environ,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  env.update(env_extra or {})
  return subprocess.Popen(
      [sys.executable, WORKER, str(workdir), str(mesh_data), str(steps),
       *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _finish(*procs):
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]
    outs.append(out)
  return outs


def _state(workdir):
  _, _, variables, step = train.restore_model(str(workdir))
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}, step


def _final_psnr(out: str) -> float:
  """The eval PSNR a worker printed on its `FINAL pid devices psnr` line."""
  lines = [line for line in out.splitlines() if line.startswith('FINAL ')]
  assert len(lines) == 1, out[-4000:]
  return float(lines[0].split()[3])


def _assert_same_psnr(a: float, b: float) -> None:
  # Parameters agree to ATOL; the eval PSNR over the same 16 images then
  # agrees to far below 1e-4 dB (a process or device averaging only its own
  # share of the images is off by tenths of a dB).
  assert abs(a - b) < 1e-4, (a, b)


def _assert_close(a, b):
  assert sorted(a) == sorted(b)
  assert any('pca' in k for k in a)  # the PCA state is compared too
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=ATOL, err_msg=k)


def test_eight_devices_match_one_and_checkpoints_cross_device_counts(
    tmp_path):
  one, eight = tmp_path / 'one', tmp_path / 'eight'
  out = _finish(_run(one, 1, 5, 1), _run(eight, 8, 5, 8))
  assert 'FINAL 0 8' in out[1]
  # The spatial PCA's state (16 locations) is split by location, 2 per device.
  assert 'pca state on 8 devices: split by location, 2 of 16 each' in out[1]
  (a, step_a), (b, step_b) = _state(one), _state(eight)  # 8 -> 1 restore
  assert step_a == step_b == 5
  _assert_close(a, b)
  _assert_same_psnr(_final_psnr(out[0]), _final_psnr(out[1]))

  # 1 -> 8: the one-device run resumes on eight devices for three more steps
  # and matches eight more steps on one device.
  ref = tmp_path / 'ref'
  out = _finish(_run(one, 8, 8, 8), _run(ref, 1, 8, 1))
  assert 'Resumed from the checkpoint at step 5' in out[0]
  (c, step_c), (d, _) = _state(one), _state(ref)
  assert step_c == 8
  _assert_close(c, d)
  _assert_same_psnr(_final_psnr(out[0]), _final_psnr(out[1]))


def test_parameter_sharded_mesh_matches_one_device(tmp_path):
  """data=4 x fsdp=2: params and Adam state split in two along their largest
  divisible dimension, the batch over all 8 devices."""
  sharded, one = tmp_path / 'fsdp', tmp_path / 'one'
  out = _finish(_run(sharded, '4x2', 4, 8), _run(one, 1, 4, 1))
  (a, _), (b, _) = _state(sharded), _state(one)
  _assert_close(a, b)
  _assert_same_psnr(_final_psnr(out[0]), _final_psnr(out[1]))


# The worker's config (tiny_config + its overrides) as command-line flags of
# `python -m pcavae.main`, at 5 steps on a data mesh of 4 (2 processes x 2).
_CLI_FLAGS = (
    '--config.resolution=16', '--config.batch_size=8',
    '--config.num_train_steps=5', '--config.log_every_steps=1',
    '--config.eval_every_steps=5', '--config.checkpoint_every_steps=5',
    '--config.model.channels=(8,16)', '--config.model.latent_dim=8',
    '--config.model.num_res_layers=1',
    '--config.model.bottleneck.num_components=4',
    '--config.eval.batch_size=8', '--config.eval.num_examples=16',
    '--config.eval.grid_size=4', '--config.eval.spectra_num_images=16',
    '--config.eval.lpips=False', '--config.tensorboard=False',
    '--config.optimizer.schedule=constant', '--config.mesh.data=4',
    '--config.mesh.fsdp=1')


def test_two_processes_on_loopback_match_one_process(tmp_path):
  """Two processes started through the real command line
  (`python -m pcavae.main --coordinator_address --num_processes
  --process_id`) match one process of the worker on the same config."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  coord = f'127.0.0.1:{port}'
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'pcavae.main',
       '--config=' + os.path.join(ROOT, 'configs', 'pcavae.py') + ':runlocal',
       f'--workdir={multi}', f'--coordinator_address={coord}',
       '--num_processes=2', f'--process_id={pid}', *_CLI_FLAGS],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for pid in (0, 1)]
  one = _run(single, 1, 5, 1)
  outs, errs = [], []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-4000:]
    outs.append(out)
    errs.append(err)
  single_out = _finish(one)[0]
  for pid in (0, 1):
    assert f'jax.distributed: process {pid} of 2, 2 local / 4 devices' in (
        errs[pid])
  # Same config apart from the mesh: the flags above are the worker's.
  with open(multi / 'config.json') as f:
    multi_config = json.load(f)
  with open(single / 'config.json') as f:
    single_config = json.load(f)
  assert multi_config['mesh']['data'] == 4
  multi_config['mesh'] = single_config['mesh']
  assert multi_config == single_config
  (a, step), (b, _) = _state(multi), _state(single)
  assert step == 5
  _assert_close(a, b)
  # Only process 0 prints the final metrics and writes logs.
  # (Gloo prints its connection lines on stdout too.)
  printed = [[json.loads(line) for line in out.splitlines()
              if line.startswith('{')] for out in outs]
  assert len(printed[0]) == 1 and printed[1] == []
  assert 'Outputs in' not in outs[1]
  final = printed[0][0]
  assert final['step'] == 5 and final['eval/num_images'] == 16
  # The CLI prints values rounded to 4 decimals.
  assert abs(final['eval/psnr'] - _final_psnr(single_out)) <= 1.5e-4
  with open(multi / 'metrics.jsonl') as f:
    steps = [line for line in f if '"loss"' in line]
  assert len(steps) == 5


def test_throughput_benchmark_runs_on_several_devices(tmp_path):
  """experiments/throughput.py (spatial16) on 2 forced devices: the step keeps
  the state's shardings from call to call (its own jit once returned the PCA
  basis sharded, and the second call rejected it), with the PCA state split
  by location (the default) and replicated (`pca:replicated`)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'throughput.py'),
       '--sizes=64', '--kinds=pca,pca:replicated,identity', '--steps=2',
       '--rounds=1', f'--out={tmp_path}'],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(tmp_path / 'throughput.jsonl') as f:
    records = [json.loads(line) for line in f]
  trains = {r['measurement']: r for r in records
            if r['measurement'].startswith('train/')}
  assert set(trains) == {'train/pca', 'train/pca:replicated',
                         'train/identity'}
  assert trains['train/pca']['pca_split_by_location'] is True
  assert trains['train/pca:replicated']['pca_split_by_location'] is False
  assert trains['train/identity']['pca_split_by_location'] is False
  shares = {r['measurement'] for r in records
            if r['measurement'].startswith('bottleneck_share/')}
  assert shares == {'bottleneck_share/pca', 'bottleneck_share/pca:replicated'}
  assert all(r['num_devices'] == 2 and r['steps_timed'] == 2
             and r['step_ms'] > 0 for r in trains.values())
  assert (tmp_path / 'throughput.md').exists()
