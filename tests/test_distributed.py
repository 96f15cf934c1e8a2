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
  assert 'PCA state on 8 devices: split by location, 2 of 16 each' in out[1]
  (a, step_a), (b, step_b) = _state(one), _state(eight)  # 8 -> 1 restore
  assert step_a == step_b == 5
  _assert_close(a, b)

  # 1 -> 8: the one-device run resumes on eight devices for three more steps
  # and matches eight more steps on one device.
  ref = tmp_path / 'ref'
  out = _finish(_run(one, 8, 8, 8), _run(ref, 1, 8, 1))
  assert 'Resumed from the checkpoint at step 5' in out[0]
  (c, step_c), (d, _) = _state(one), _state(ref)
  assert step_c == 8
  _assert_close(c, d)


def test_parameter_sharded_mesh_matches_one_device(tmp_path):
  """data=4 x fsdp=2: params and Adam state split in two along their largest
  divisible dimension, the batch over all 8 devices."""
  sharded, one = tmp_path / 'fsdp', tmp_path / 'one'
  _finish(_run(sharded, '4x2', 4, 8), _run(one, 1, 4, 1))
  (a, _), (b, _) = _state(sharded), _state(one)
  _assert_close(a, b)


def test_two_processes_on_loopback_match_one_process(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  coord = f'127.0.0.1:{port}'
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  procs = [_run(multi, 4, 5, 2, extra=(coord, '2', str(pid)))
           for pid in (0, 1)]
  procs.append(_run(single, 1, 5, 1))
  out = _finish(*procs)
  assert 'FINAL 0 4' in out[0] and 'FINAL 1 4' in out[1]
  (a, _), (b, _) = _state(multi), _state(single)
  _assert_close(a, b)
  # Only process 0 wrote logs.
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
