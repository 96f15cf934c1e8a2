"""The adaptive AE warm-up switch (`warmup_auto`, pcavae/warmup.py) and the
warm-up-length study (experiments/warmup_length.py)."""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from pcavae import analysis
from pcavae import configlib
from pcavae import train
from pcavae import warmup
from pcavae import writers

# Synthetic spectra with a known answer: latent variances lambda_i = i^-2
# (i = 1..16), each direction learned along a sigmoid centred at step
# SPACING * i (directions in order of variance, as the theory has it); at
# R = 6 bits reverse water-filling keeps 5 of them.
LAM = np.arange(1, 17, dtype=np.float64) ** -2.0
RATE = 6.0
EVERY, PATIENCE, TOL = 10, 3, 0.05


def learned(t, spacing=40.0, width=10.0):
  """Fraction of each direction's variance learned at step t."""
  return 1.0 / (1.0 + np.exp(-(t - spacing * np.arange(1, 17)) / width))


def spectrum(t, **kw):
  # A small floor: unlearned directions are not exactly 0 in a real latent.
  return LAM * learned(t, **kw) + 1e-4 * LAM[-1]


def first_switch(criterion, steps=2000, **kw):
  """First check step at which `criterion(history)` holds, and the history."""
  history = warmup.auto_history_init(PATIENCE, LAM.size)
  for t in range(0, steps, EVERY):
    history = warmup.auto_history_push(history, spectrum(t, **kw), RATE)
    if criterion(history):
      return t, history
  return None, history


def test_criterion_switches_once_the_waterfilled_directions_are_learned():
  k_star = analysis.waterfilling_dim(LAM, RATE)
  assert k_star == 5
  t, history = first_switch(lambda h: warmup.auto_criterion_met(h, TOL))
  a = learned(t)
  # Not before: the k*-th direction is learned (and all before it) ...
  assert a[k_star - 1] > 0.99, (t, a[:k_star])
  assert int(history['dims'][-1]) == k_star
  assert warmup.auto_spread(history) <= TOL
  # ... and not long after: the tail (which water-filling drops) is not.
  assert a[k_star + 2] < 0.5 and a[-1] < 1e-3, (t, a)
  # At every earlier check the criterion was not met (the history then).
  h = warmup.auto_history_init(PATIENCE, LAM.size)
  for s in range(0, t, EVERY):
    h = warmup.auto_history_push(h, spectrum(s), RATE)
    assert not warmup.auto_criterion_met(h, TOL), s


def test_count_and_share_alone_switch_before_anything_is_learned():
  # Why the criterion watches the variances, not only the count and the
  # share: while directions grow together the shares sit still.
  def count_and_share(h):
    n = int(h['num_checks'])
    dims, shares = h['dims'], h['shares']
    return bool(n >= len(dims) and dims[0] > 0 and np.all(dims == dims[0])
                and shares.max() - shares.min() <= 0.01)
  t, _ = first_switch(count_and_share)
  assert t is not None and learned(t)[0] < 0.5


def test_a_plateau_longer_than_the_window_passes_the_criterion():
  # The stated limit of a stationarity test: with learning events 100 steps
  # apart and a window of PATIENCE * EVERY = 30 steps it stops in between.
  t, _ = first_switch(lambda h: warmup.auto_criterion_met(h, TOL),
                      spacing=100.0)
  assert learned(t, spacing=100.0)[4] < 0.5


def test_history_push_and_criterion_basics():
  h = warmup.auto_history_init(2, 4)
  v = np.array([4.0, 2.0, 1.0, 1e-3])
  k, share = warmup.waterfilled_directions(v, 2.0)
  assert k == analysis.waterfilling_dim(v, 2.0)
  assert share == pytest.approx(v[:k].sum() / v.sum())
  for n in range(1, 4):
    h = warmup.auto_history_push(h, v[::-1], 2.0)   # order does not matter
    assert int(h['num_checks']) == n
    assert warmup.auto_criterion_met(h, 0.0) == (n == 3)
  assert h['log_variances'].dtype == np.float32 and h['dims'][-1] == k
  np.testing.assert_allclose(h['log_variances'][-1], np.log(v), rtol=1e-6)
  # One water-filled variance 10% larger breaks a 5% tolerance.
  h2 = warmup.auto_history_push(h, v * np.array([1.1, 1, 1, 1]), 2.0)
  assert warmup.auto_spread(h2) == pytest.approx(np.log(1.1), rel=1e-5)
  assert not warmup.auto_criterion_met(h2, 0.05)
  assert warmup.auto_criterion_met(h2, 0.1)
  # A changed count breaks it whatever the tolerance.
  h3 = warmup.auto_history_push(h, np.array([4.0, 0, 0, 0]), 2.0)
  assert not warmup.auto_criterion_met(h3, 10.0)


def auto_config(kind='vqvae', **bottleneck):
  c = tiny_config(kind)
  b = c.model.bottleneck
  b.warmup_steps, b.warmup_auto = 5, True
  for k, v in bottleneck.items():
    b[k] = v
  return c


@pytest.mark.parametrize('family,key,value,match', [
    ('vqvae', 'warmup_steps', 0, 'warmup_auto=True needs .*warmup_steps'),
    ('vqvae', 'warmup_auto', 1, 'warmup_auto=1'),
    ('vqvae', 'warmup_auto_every', 0, 'warmup_auto_every'),
    ('vqvae', 'warmup_auto_patience', -2, 'warmup_auto_patience'),
    ('vqvae', 'warmup_auto_tolerance', -0.1, 'warmup_auto_tolerance'),
    ('pcavae', 'warmup_steps', 5, 'warmup_auto=True: .* K codes'),
])
def test_auto_config_errors_name_the_key(family, key, value, match):
  c = auto_config(family)
  # A new dict: ConfigDict's type safety would refuse 1 for a bool field
  # (a config loaded from JSON or built by hand has no such guard).
  c.model.bottleneck = dict(c.model.bottleneck.to_dict(), **{key: value})
  with pytest.raises(ValueError, match=match):
    configlib.validate(c)


def test_auto_keys_are_settable_and_old_runs_resume():
  for family in ('vqvae', 'ema_vq', 'fsq'):
    c = tiny_config(family)
    b = c.model.bottleneck
    assert b.warmup_auto is False     # present: --config.<key> works
    b.warmup_auto_tolerance = 0.1     # typed: a float key
    configlib.validate(auto_config(family))
  # A run saved before these keys existed resumes under the defaults.
  saved = tiny_config('vqvae').to_dict()
  for k in list(saved['model']['bottleneck']):
    if k.startswith('warmup_auto'):
      del saved['model']['bottleneck'][k]
  assert configlib.differences(saved, tiny_config('vqvae')) == []


def _run_config():
  c = tiny_config('vqvae', num_train_steps=12, log_every_steps=1,
                  eval_every_steps=100, checkpoint_every_steps=3,
                  **{'eval.lpips': False, 'eval.spectra_num_images': 0,
                     'model.bottleneck.codebook_size': 16})
  b = c.model.bottleneck
  b.warmup_steps, b.warmup_kmeans_batches, b.warmup_kmeans_iters = 10, 2, 5
  # Checks at every step; measured on this tiny model the count settles at
  # step 6 and the spread over 3 checks falls to 0.27 at step 8 (0.39 at 7).
  b.warmup_auto, b.warmup_auto_every = True, 1
  b.warmup_auto_patience, b.warmup_auto_tolerance = 2, 0.3
  return c


def test_auto_switch_is_logged_and_survives_resume(tmp_path):
  full = str(tmp_path / 'full')
  train.train_and_evaluate(_run_config(), full)
  records = [r for r in writers.read_metrics(full) if 'loss' in r]
  switch = [r for r in records if 'warmup/switch_step' in r]
  assert len(switch) == 1
  s = switch[0]
  step = int(s['warmup/switch_step'])
  # Switched by the criterion, before the cap, after the step-6 checkpoint.
  assert s['warmup/switch_reason'] == warmup.REASON_CRITERION
  assert 6 < step < 10 and s['step'] == step + 1
  assert s['warmup/auto_check_step'] == step
  assert s['warmup/auto_spread'] <= 0.3 and s['warmup/auto_dim'] >= 1
  assert 0 < s['warmup/auto_share'] <= 1
  checks = [r['warmup/auto_check_step'] for r in records
            if 'warmup/auto_check_step' in r]
  assert checks == list(range(step + 1))   # one check per step, then none
  active = {r['step']: r['bottleneck/quantizer_active'] for r in records}
  assert all(active[t] == (t > step) for t in active)

  # Killed after its step-6 checkpoint: the resumed run restores the
  # criterion's history and switches at the same step, to the same state.
  resumed = str(tmp_path / 'resumed')
  os.makedirs(os.path.join(resumed, 'checkpoints'))
  shutil.copytree(os.path.join(full, 'checkpoints', '6'),
                  os.path.join(resumed, 'checkpoints', '6'))
  shutil.copy(os.path.join(full, 'config.json'), resumed)
  train.train_and_evaluate(_run_config(), resumed)
  records_r = [r for r in writers.read_metrics(resumed) if 'loss' in r]
  switch_r = [r for r in records_r if 'warmup/switch_step' in r]
  assert len(switch_r) == 1
  for k, v in s.items():
    if k.startswith('warmup/') and k != 'warmup/switch_seconds':
      assert switch_r[0][k] == pytest.approx(v, rel=1e-6), k
  _, _, a, step_a = train.restore_model(full)
  _, _, b, step_b = train.restore_model(resumed)
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a),
               jax.device_get(b))


def test_study_script_quick(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'experiments'))
  import warmup_length  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'study')
  res = warmup_length.main(['--quick', f'--out={out}'])
  for setting in warmup_length.SETTINGS:
    runs = res['results'][setting]['vq']
    assert set(runs) == {'warmup_0.50', 'auto'}
    for r in runs.values():
      assert np.isfinite(r['loss']) and r['loss'] > 0
      assert 0 < r['usage'] <= 1 and r['z_q_dim99'] >= 1
    a = runs['auto']
    assert a['checks'] and a['checks'][0]['step'] == 0
    assert a['switch_step'] <= res['meta'][setting]['steps'] // 2
    assert a['switch_reason'] in (warmup.REASON_CRITERION, warmup.REASON_CAP)
  for name in ('results.md', 'results.json', 'warmup_length.png'):
    assert os.path.exists(os.path.join(out, name))
  assert '| VQ | auto: ' in res['markdown']
