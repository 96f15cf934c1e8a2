"""Kills, preemption, damaged checkpoints, NaN and config mismatches, with
real processes and real files."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from pcavae import train
from pcavae import writers

# Measurements that depend on wall-clock time, not on the computation.
TIMING_KEYS = ('steps_per_sec', 'images_per_sec', 'input_wait_fraction',
               'eval/seconds')


def _cli(workdir, steps, ckpt_every, extra=()):
  return [sys.executable, '-m', 'pcavae.main',
          '--config=' + os.path.join(ROOT, 'configs', 'pcavae.py') +
          ':runlocal',
          f'--workdir={workdir}', f'--config.num_train_steps={steps}',
          '--config.resolution=16', '--config.model.channels=(8,16)',
          '--config.model.latent_dim=8', '--config.model.num_res_layers=1',
          '--config.model.bottleneck.num_components=4',
          '--config.batch_size=8', '--config.eval.batch_size=8',
          '--config.eval.num_examples=8', '--config.log_every_steps=5',
          '--config.eval_every_steps=20',
          f'--config.checkpoint_every_steps={ckpt_every}',
          '--config.tensorboard=False', *extra]


def _finished_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _wait_for(predicate, proc, timeout=300):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError('process ended early: ' +
                           proc.stderr.read()[-3000:])
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError('timed out')
    time.sleep(0.05)


def _final_state(workdir):
  _, _, variables, step = train.restore_model(workdir)
  return jax.device_get(variables), step


def _history(workdir):
  return [{k: v for k, v in r.items()
           if k not in TIMING_KEYS and 'seconds' not in k}
          for r in writers.read_metrics(workdir)]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  steps, every = 60, 10
  ref = tmp_path / 'uninterrupted'
  out = subprocess.run(_cli(ref, steps, every), capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]

  run = tmp_path / 'killed'
  proc = subprocess.Popen(_cli(run, steps, every), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  _wait_for(lambda: any(s >= 20 for s in _finished_steps(run)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _finished_steps(run)
  assert killed_at and max(killed_at) < steps, killed_at
  out = subprocess.run(_cli(run, steps, every), capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resumed from the checkpoint at step' in out.stderr

  (a, step_a), (b, step_b) = _final_state(ref), _final_state(run)
  assert step_a == step_b == steps
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert _history(ref) == _history(run)


def test_sigterm_saves_at_the_interrupted_step(tmp_path):
  run = tmp_path / 'preempted'
  proc = subprocess.Popen(_cli(run, 100_000, 100_000), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  _wait_for(lambda: len(writers.read_metrics(run)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  saved = _finished_steps(run)
  assert len(saved) == 1 and 0 < saved[0] < 100_000
  assert f'saved a checkpoint at step {saved[0]}' in err
  # The next start resumes from it.
  out = subprocess.run(_cli(run, saved[0] + 3, 100_000), capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Resumed from the checkpoint at step {saved[0]}' in out.stderr


def _damage_delete(step_dir):
  os.remove(os.path.join(step_dir, 'default', '_METADATA'))


def _damage_truncate(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'default', '**', 'd',
                                             '*'), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)


@pytest.mark.parametrize('damage', [_damage_delete, _damage_truncate])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, damage):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  train.train_and_evaluate(config, workdir)
  assert _finished_steps(workdir) == [3, 6]
  damage(os.path.join(workdir, 'checkpoints', '6'))

  config.num_train_steps = 9
  final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 9
  # Step 6 was skipped and moved aside, not deleted; 6 and 9 were re-saved.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_damaged', '6'))
  assert _finished_steps(workdir) == [3, 6, 9]
  steps = [r['step'] for r in writers.read_metrics(workdir) if 'loss' in r]
  assert steps == [2, 4, 6, 8, 9]  # history after step 3 replaced, not doubled

  # A relative workdir restores too (orbax needs absolute paths).
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    assert train.restore_model('run')[3] == 9
  finally:
    os.chdir(cwd)
  assert _finished_steps(workdir) == [3, 6, 9]

  # When no checkpoint restores at all, refuse, and move nothing.
  for step in (3, 6, 9):
    _damage_delete(os.path.join(workdir, 'checkpoints', str(step)))
  config.num_train_steps = 12
  with pytest.raises(RuntimeError, match='could be restored'):
    train.train_and_evaluate(config, workdir)
  assert _finished_steps(workdir) == [3, 6, 9]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = tiny_config(num_train_steps=3)
  train.train_and_evaluate(config, workdir)
  assert _finished_steps(workdir) == [3]

  # An infinite learning rate makes the next update (and the PCA step tied to
  # it) produce a real NaN loss.
  config = tiny_config(num_train_steps=6)
  config.optimizer.learning_rate = float('inf')
  with pytest.raises(train.NonFiniteError, match=r'Non-finite \w+ at step 3'):
    train.train_and_evaluate(config, workdir, config_mismatch='allow')
  assert _finished_steps(workdir) == [3]
  variables, step = _final_state(workdir)
  assert step == 3
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))


def test_skip_nonfinite_steps_finishes_and_counts(tmp_path):
  workdir = str(tmp_path / 'skip')
  config = tiny_config(num_train_steps=4, skip_nonfinite_steps=True)
  config.optimizer.learning_rate = float('inf')
  final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 4
  counts = [r['num_nonfinite_steps'] for r in writers.read_metrics(workdir)
            if 'num_nonfinite_steps' in r]
  assert counts[-1] == 4  # every update was non-finite and skipped
  variables, _ = _final_state(workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))
  # Skipped means not applied at all: parameters and the PCA state (updated
  # outside the gradient, so reverted separately if one forgot it) are
  # exactly those of the initial state, as the trainer creates it.
  model = train.create_model(config)
  tx, _ = train.make_optimizer(config)
  initial = jax.device_get(train.initialize(
      train.make_init_fn(model, tx, config), jax.random.PRNGKey(config.seed),
      None))
  expected = {'params': initial['params'], **train.collections_of(initial)}
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  assert 'pca' in expected
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)


def test_workdir_with_a_different_config_refuses_to_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=2), workdir)
  changed = tiny_config(num_train_steps=4)
  changed.model.bottleneck.num_components = 3
  with pytest.raises(ValueError, match='model.bottleneck.num_components'):
    train.train_and_evaluate(changed, workdir)
  # Step counts may change freely; other keys only when allowed.
  final = train.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  assert final['step'] == 3
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 3
