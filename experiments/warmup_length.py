r"""How the AE warm-up's length governs the final loss, and the adaptive switch.

For a fixed total number of steps, each quantizer (`--kinds`: VQ, EMA-VQ,
FSQ) is trained with an AE warm-up of 0, 5, 10, 20, 40, 60, 80% of the steps
(`--fractions`), and once with the adaptive switch
(`config.model.bottleneck.warmup_auto`, pcavae/warmup.py; its cap is the
largest fraction), on two settings (`--settings`):

  synthetic      the linear autoencoder on power-law Gaussian data of
                 experiments/synthetic_collapse.py (dim 64, decay 2, latent
                 d = 32, K = 1024 or FSQ (8, 5, 5, 5), batch 256, Adam 1e-3);
                 the warm-up switch and the adaptive criterion are the
                 package's (`warmup.make_switch_fn`, `warmup.auto_*`), the
                 probe set the first `warmup_kmeans_batches` training batches
                 as in the trainer. Final loss: held-out MSE / data variance.
  photo_patches  the trainer (`train.train_and_evaluate`) on the embedded
                 photo crops, 32 px, a reduced runlocal model (channels
                 16/32, D = 32, an 8x8 latent, batch 16, Adam 1e-3 cosine);
                 `--full` uses the runlocal model (channels 32/64, D = 64,
                 batch 32) and 1500 steps. Final loss: eval PSNR (MSE),
                 LPIPS-AlexNet.

Reported per run: the final loss, z_q and codebook 99%-variance dimension,
codebook usage (share of codes the held-out set hits), and for the adaptive
run its switch step and the criterion's measurements there. Outputs in
`--out` (default workdirs/warmup_length): `results.md`, `results.json`,
`warmup_length.png` (copy it to docs/), one folder per setting and run (a
finished run is not retrained: its `result.json` is read back; `--rerun`
retrains).

  python experiments/warmup_length.py                   # CPU-sized (default)
  python experiments/warmup_length.py --settings=synthetic
  python experiments/warmup_length.py --full            # 1500-step runlocal
  python experiments/warmup_length.py --quick           # CI smoke test
"""

import argparse
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pcavae import analysis
from pcavae import configlib
from pcavae import harness
from pcavae import viz
from pcavae import warmup
from pcavae import writers
from pcavae.models import bottlenecks
import synthetic_collapse  # beside this script

SETTINGS = ('synthetic', 'photo_patches')
KINDS = ('vq', 'ema_vq', 'fsq')
LABELS = {'vq': 'VQ', 'ema_vq': 'EMA-VQ', 'fsq': 'FSQ'}
COLORS = {'vq': 'tab:red', 'ema_vq': 'tab:blue', 'fsq': 'tab:green'}
CONFIG_FAMILIES = {'vq': 'vqvae', 'ema_vq': 'ema_vq', 'fsq': 'fsq'}
FSQ_LEVELS = (8, 5, 5, 5)      # 1000 codes, ~ the K = 1024 of VQ
AUTO = 'auto'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  """The command line (argparse, not absl flags: this script imports
  experiments/synthetic_collapse.py, whose absl flags would clash)."""
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default=os.path.join(harness.WORKDIRS,
                                               'warmup_length'),
                 help='Output directory.')
  p.add_argument('--settings', default=','.join(SETTINGS),
                 help='Settings to run (comma-separated).')
  p.add_argument('--kinds', default=','.join(KINDS),
                 help='Quantizers (comma-separated).')
  p.add_argument('--fractions', default='0,0.05,0.1,0.2,0.4,0.6,0.8',
                 help='Warm-up lengths as fractions of the steps.')
  p.add_argument('--no_auto', action='store_true',
                 help='Skip the adaptive switch runs (cap: the largest '
                 'fraction).')
  p.add_argument('--synthetic_steps', type=int, default=1000)
  p.add_argument('--photo_steps', type=int, default=300)
  p.add_argument('--auto_every', type=float, default=0.02,
                 help='warmup_auto_every as a fraction of the steps.')
  p.add_argument('--auto_patience', type=int,
                 default=configlib.DEFAULT_AUTO_PATIENCE)
  p.add_argument('--auto_tolerance', type=float,
                 default=configlib.DEFAULT_AUTO_TOLERANCE)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--full', action='store_true',
                 help='photo_patches at the runlocal size (channels 32/64, '
                 'D = 64, batch 32, 1500 steps), synthetic at 4000 steps.')
  p.add_argument('--quick', action='store_true',
                 help='A smoke test (CI): VQ only, length 50%% and adaptive, tiny '
                 'runs.')
  p.add_argument('--rerun', action='store_true',
                 help='Retrain finished runs.')
  p.add_argument('--report_only', action='store_true',
                 help='Train nothing: report the finished runs in --out.')
  return p.parse_args(argv)


def run_name(fraction) -> str:
  return AUTO if fraction == AUTO else f'warmup_{float(fraction):.2f}'


def auto_every_steps(steps: int, fraction: float) -> int:
  return max(1, int(round(steps * fraction)))


# ---------------------------------------------------------------------------
# The synthetic linear setting.
# ---------------------------------------------------------------------------


def synthetic_args(steps: int) -> Dict[str, Any]:
  return dict(dim=64, latent_dim=32, decay=2.0, k=1024, steps=steps,
              batch_size=256, learning_rate=1e-3, eval_samples=8192,
              kmeans_batches=configlib.DEFAULT_KMEANS_BATCHES,
              kmeans_iters=configlib.DEFAULT_KMEANS_ITERS)


def synthetic_bottleneck(kind: str, k: int):
  if kind == 'fsq':
    return 'fsq', dict(levels=FSQ_LEVELS)
  return kind, dict(codebook_size=k)


def synthetic_run(kind: str, warmup_steps: int, auto: Optional[Dict[str, Any]],
                  args: Dict[str, Any], seed: int,
                  log: Callable[[str], None]) -> Dict[str, Any]:
  """Trains the linear AE with `kind` and a warm-up of `warmup_steps` (with
  `auto`, the adaptive switch's parameters, `warmup_steps` is its cap).

  The loop mirrors the trainer's: the check and the switch at step s happen
  before update s, the switch's k-means sees the batches of steps s, s+1,
  ..., and the criterion's probe is the batches of steps 0, 1, ....
  """
  b_kind, kwargs = synthetic_bottleneck(kind, args['k'])
  num_codes = bottlenecks.get(b_kind)(**kwargs).num_codes
  lam, u = synthetic_collapse.data_covariance(args['dim'], args['decay'],
                                              seed)
  sample = synthetic_collapse.sampler(lam, u)
  model = synthetic_collapse.LinearAE(args['dim'], args['latent_dim'],
                                      b_kind, kwargs,
                                      warmup=warmup_steps > 0)
  key = jax.random.PRNGKey(seed)
  init_key, data_key, eval_key, kmeans_key = jax.random.split(key, 4)
  variables = dict(model.init({'params': init_key},
                              jnp.zeros((1, args['dim'])), train=False))
  params = variables.pop('params')
  cols = variables
  tx = optax.adam(args['learning_rate'])
  opt_state = tx.init(params)
  lr = jnp.float32(args['learning_rate'])

  @jax.jit
  def step(params, cols, opt_state, x):
    def loss_fn(p):
      (recon, aux), new_cols = model.apply(
          {'params': p, **cols}, x, train=True, lr=lr, mutable=list(cols))
      return jnp.mean(jnp.square(recon - x)) + aux['loss'], dict(new_cols)
    (_, new_cols), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_cols, opt_state

  encode = jax.jit(lambda p, c, x: model.apply(
      {'params': p, **c}, x, method=synthetic_collapse.LinearAE.encode))
  batch = lambda i: sample(jax.random.fold_in(data_key, i),
                           args['batch_size'])
  switch_fn = None
  if warmup_steps:
    config = ml_collections.ConfigDict({'model': {'bottleneck': dict(
        kind=b_kind, warmup_kmeans_iters=args['kmeans_iters'], **kwargs)}})
    switch_fn = jax.jit(warmup.make_switch_fn(config))
  history = None
  rate = float(np.log2(num_codes))
  if auto is not None:
    history = warmup.auto_history_init(auto['patience'], args['latent_dim'])
    probe = [batch(j) for j in range(args['kmeans_batches'])]
  checks, switched, info = [], False, {}
  t0 = time.perf_counter()
  for i in range(args['steps']):
    if switch_fn is not None and not switched:
      go, reason = i == warmup_steps, warmup.REASON_FIXED
      if auto is not None:
        reason = warmup.REASON_CAP
        if i % auto['every'] == 0 or i == warmup_steps:
          z = np.concatenate([np.asarray(encode(params, cols, x))[:, 0, 0]
                              for x in probe])
          var = np.square(analysis.singular_values(z)) / len(z)
          history = warmup.auto_history_push(history, var, rate)
          met = warmup.auto_criterion_met(history, auto['tolerance'])
          checks.append({'step': i, 'dim': int(history['dims'][-1]),
                         'share': float(history['shares'][-1]),
                         'spread': warmup.auto_spread(history)})
          if met:
            go, reason = True, warmup.REASON_CRITERION
      if go:
        latents = tuple(encode(params, cols, batch(i + j))
                        for j in range(args['kmeans_batches']))
        state, _ = switch_fn({'params': params, **cols}, latents,
                             jax.random.fold_in(kmeans_key, i))
        params = state.pop('params')
        cols = state
        switched = True
        info = {'switch_step': i, 'switch_reason': reason}
        if checks:
          info.update({f'switch_{k}': v for k, v in checks[-1].items()
                       if k != 'step'})
    params, cols, opt_state = step(params, cols, opt_state, batch(i))
  x_eval = sample(eval_key, args['eval_samples'])
  m = synthetic_collapse.measure(model, {'params': params, **cols}, x_eval,
                                 float(lam.sum()))
  recon, aux = model.apply({'params': params, **cols}, x_eval, train=False)
  del recon
  used = np.unique(np.asarray(aux['codes'])).size
  out = {'loss': m['rel_mse'], 'z_q_dim99': m['z_q_dim99'],
         'z_e_dim99': m['z_e_dim99'],
         'codebook_dim99': m.get('codebook_dim99'),
         'used_codebook_dim99': m.get('used_codebook_dim99'),
         'usage': used / num_codes, 'checks': checks,
         'seconds': time.perf_counter() - t0,
         'waterfilling_dim_data': analysis.waterfilling_dim(lam, rate),
         **info}
  log(f'  synthetic {kind} warm-up {warmup_steps}{" (auto cap)" if auto else ""}'
      f': rel. MSE {out["loss"]:.4f}, z_q dim99 {out["z_q_dim99"]}, usage '
      f'{out["usage"]:.3f}{", switch " + str(info) if auto else ""}')
  return out


# ---------------------------------------------------------------------------
# photo_patches: the trainer.
# ---------------------------------------------------------------------------


def photo_config(kind: str, steps: int, warmup_steps: int,
                 auto: Optional[Dict[str, Any]], seed: int, full: bool,
                 quick: bool) -> ml_collections.ConfigDict:
  c = harness.load_config(CONFIG_FAMILIES[kind],
                          f'runlocal,warmup={warmup_steps}')
  c.seed = seed
  c.num_train_steps = steps
  c.eval_every_steps = steps          # one eval, at the end
  c.checkpoint_every_steps = steps
  c.log_every_steps = max(1, steps // 20)
  c.tensorboard = False
  c.eval.num_examples = 256
  c.eval.spectra_num_images = 256
  if not full:
    c.batch_size = 16
    c.model.channels = (16, 32)
    c.model.latent_dim = 32
  if quick:
    configlib.shrink_for_smoke_run(c, steps)
    c.log_every_steps = max(1, steps // 20)
    c.model.latent_dim = 8
    c.model.bottleneck.warmup_kmeans_batches = 2
    c.model.bottleneck.warmup_kmeans_iters = 5
    if kind != 'fsq':
      c.model.bottleneck.codebook_size = 16
  if auto is not None:
    c.model.bottleneck.warmup_auto = True
    c.model.bottleneck.warmup_auto_every = auto['every']
    c.model.bottleneck.warmup_auto_patience = auto['patience']
    c.model.bottleneck.warmup_auto_tolerance = auto['tolerance']
  return c


def photo_run(kind: str, warmup_steps: int, auto: Optional[Dict[str, Any]],
              steps: int, seed: int, workdir: str, full: bool, quick: bool,
              log: Callable[[str], None]) -> Dict[str, Any]:
  config = photo_config(kind, steps, warmup_steps, auto, seed, full, quick)
  record = harness.train_once(config, workdir)
  final = record['final']
  records = writers.read_metrics(workdir)
  checks = [{'step': int(r['warmup/auto_check_step']),
             'dim': int(r['warmup/auto_dim']),
             'share': r['warmup/auto_share'],
             'spread': r['warmup/auto_spread']}
            for r in records if 'warmup/auto_check_step' in r]
  info = {}
  for r in records:
    if 'warmup/switch_step' in r:
      info = {'switch_step': int(r['warmup/switch_step']),
              'switch_reason': int(r['warmup/switch_reason'])}
      if 'warmup/auto_dim' in r:
        info.update(switch_dim=int(r['warmup/auto_dim']),
                    switch_share=r['warmup/auto_share'],
                    switch_spread=r['warmup/auto_spread'])
  # loss: the MSE of [0, 1] images at the mean PSNR (ranks as PSNR does).
  out = {'loss': 10 ** (-final['eval/psnr'] / 10),
         'psnr': final['eval/psnr'], 'lpips': final.get('eval/lpips_alex'),
         'z_q_dim99': final.get('spectra/z_q/dim99'),
         'z_e_dim99': final.get('spectra/z_e/dim99'),
         'codebook_dim99': final.get('spectra/codebook/dim99'),
         'used_codebook_dim99': final.get('spectra/codebook_used/dim99'),
         'usage': final.get('eval/codebook_usage'), 'checks': checks,
         'seconds': record['train_minutes'] * 60, **info}
  log(f'  photo_patches {kind} warm-up {warmup_steps}'
      f'{" (auto cap)" if auto else ""}: PSNR {out["psnr"]:.2f}, z_q dim99 '
      f'{out["z_q_dim99"]}, usage {out["usage"]}'
      f'{", switch " + str(info) if auto else ""}')
  return out


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def best_fixed(runs: Dict[str, Dict[str, Any]]) -> Optional[str]:
  fixed = [n for n in runs if n != AUTO]
  return min(fixed, key=lambda n: runs[n]['loss']) if fixed else None


def table(setting: str, results: Dict[str, Dict[str, Dict[str, Any]]],
          meta: Dict[str, Any]) -> str:
  photo = setting == 'photo_patches'
  rows = []
  summary = []
  for kind, runs in results.items():
    best = best_fixed(runs)
    for name in sorted(runs, key=lambda n: (n == AUTO, n)):
      r = runs[name]
      if name == AUTO:
        reason = warmup.REASON_NAMES.get(r.get('switch_reason'), '?')
        length = (f"auto: {r.get('switch_step')} "
                  f"({r.get('switch_step', 0) / meta['steps']:.0%}, {reason})")
      else:
        length = f"{int(round(float(name.split('_')[1]) * meta['steps']))}"
        if name == best:
          length = f'**{length}** (best)'
      loss = ([f"{r['psnr']:.2f}", harness.fmt(r.get('lpips'), '.4f')]
              if photo else [f"{r['loss']:.4f}"])
      cb = (f"{harness.fmt(r.get('codebook_dim99'), '.0f')} / "
            f"{harness.fmt(r.get('used_codebook_dim99'), '.0f')}"
            if r.get('codebook_dim99') is not None else '-')
      rows.append([LABELS[kind], length] + loss + [
          harness.fmt(r.get('z_q_dim99'), '.0f'), cb,
          harness.fmt(r.get('usage'), '.3f')])
    if AUTO in runs and best:
      a, b = runs[AUTO], runs[best]
      if photo:
        margin = f"{a['psnr'] - b['psnr']:+.2f} dB PSNR"
      else:
        margin = f"{a['loss'] / b['loss'] - 1:+.1%} rel. MSE"
      summary.append(
          f"- {LABELS[kind]}: adaptive switch at step {a.get('switch_step')} "
          f"({warmup.REASON_NAMES.get(a.get('switch_reason'), '?')}; "
          f"{a.get('switch_dim', '-')} water-filled directions, share "
          f"{harness.fmt(a.get('switch_share'), '.3f')}, spread "
          f"{harness.fmt(a.get('switch_spread'), '.3f')}); best fixed length "
          f"{int(round(float(best.split('_')[1]) * meta['steps']))} steps; "
          f"adaptive vs best: {margin}.")
  lines = [f'**{setting}**: {meta["description"]}', ''] + (
      harness.markdown_table(
          ['quantizer', 'warm-up'] + (['PSNR', 'LPIPS'] if photo
                                      else ['rel. MSE'])
          + ['z_q dim99', 'codebook dim99 (all / used)', 'codebook usage'],
          rows))
  return '\n'.join(lines + [''] + summary) + '\n'


def plot(all_results, metas, path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  settings = list(all_results)
  fig = Figure(figsize=(max(7.5, 6.5 * len(settings)), 8.5), dpi=100)
  fig.subplots_adjust(left=0.1, right=0.98, bottom=0.07, top=0.9,
                      wspace=0.3, hspace=0.3)
  axes = np.asarray(fig.subplots(2, len(settings))).reshape(2, -1)
  for col, setting in enumerate(settings):
    meta = metas[setting]
    ax_loss, ax_dim = axes[0, col], axes[1, col]
    photo = setting == 'photo_patches'
    for kind, runs in all_results[setting].items():
      names = sorted(n for n in runs if n != AUTO)
      fr = [float(n.split('_')[1]) * 100 for n in names]
      c = COLORS[kind]
      y = [runs[n]['psnr'] if photo else runs[n]['loss'] for n in names]
      ax_loss.plot(fr, y, 'o-', color=c, label=LABELS[kind])
      ax_dim.plot(fr, [runs[n]['z_q_dim99'] for n in names], 'o-', color=c,
                  label=f'{LABELS[kind]}: z_q')
      if AUTO in runs and runs[AUTO].get('switch_step') is not None:
        a = runs[AUTO]
        x = 100 * a['switch_step'] / meta['steps']
        ax_loss.plot([x], [a['psnr'] if photo else a['loss']], '*', ms=16,
                     color=c, mec='k', label=f'{LABELS[kind]}: adaptive')
        ax_dim.plot([x], [a['z_q_dim99']], '*', ms=16, color=c, mec='k')
    ax_loss.set(xlabel='warm-up length (% of the steps)',
                ylabel='eval PSNR (dB), higher is better' if photo else
                'held-out MSE / data variance, lower is better',
                title=f'{setting}: final loss vs warm-up length')
    if not photo:
      ax_loss.set_yscale('log')
    ax_dim.set(xlabel='warm-up length (% of the steps)',
               ylabel='z_q 99%-variance dimension',
               title=f'{setting}: final z_q dimension')
    if not photo and 'waterfilling_dim_data' in meta:
      ax_dim.axhline(meta['waterfilling_dim_data'], color='k', ls=':',
                     label='water-filling on the data (log2 1024 bits)')
    for ax in (ax_loss, ax_dim):
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle('AE warm-up length vs final result at a fixed step budget\n'
               '(stars: the adaptive switch, at its switch step)', fontsize=11)
  Image.fromarray(viz.figure_to_array(fig)).save(path)


# ---------------------------------------------------------------------------


def study(settings: List[str], kinds: List[str], fractions: List[float],
          with_auto: bool, syn_steps: int, photo_steps: int,
          auto_every: float, patience: int, tolerance: float, seed: int,
          out: str, full: bool, quick: bool, rerun: bool,
          report_only: bool = False,
          log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Runs (or reads back) every run; writes the report. Returns the results
  `{setting: {kind: {run name: result}}}` and the per-setting metadata."""
  os.makedirs(out, exist_ok=True)
  names = [run_name(f) for f in fractions] + ([AUTO] if with_auto else [])
  cap_fraction = max(fractions)
  all_results, metas = {}, {}
  for setting in settings:
    steps = syn_steps if setting == 'synthetic' else photo_steps
    auto = {'every': auto_every_steps(steps, auto_every),
            'patience': patience, 'tolerance': tolerance}
    if setting == 'synthetic':
      args = synthetic_args(steps)
      description = (
          f"linear AE, data dim {args['dim']} (variances ~ i^-2), latent d = "
          f"{args['latent_dim']}, K = {args['k']} (FSQ {FSQ_LEVELS}), "
          f"{steps} steps, batch {args['batch_size']}, Adam "
          f"{args['learning_rate']:g}; adaptive: every {auto['every']} "
          f"steps, patience {patience}, tolerance {tolerance:g}, cap "
          f"{int(cap_fraction * steps)}.")
    else:
      c = photo_config('vq', steps, 0, None, seed, full, quick)
      description = (
          f"trainer, {c.resolution} px, channels {tuple(c.model.channels)}, "
          f"D = {c.model.latent_dim}, batch {c.batch_size}, {steps} steps, "
          f"Adam {c.optimizer.learning_rate:g} cosine, eval on "
          f"{c.eval.num_examples} held-out crops; adaptive: every "
          f"{auto['every']} steps, patience {patience}, tolerance "
          f"{tolerance:g}, cap {int(cap_fraction * steps)}.")
    metas[setting] = {'steps': steps, 'description': description,
                      'auto': auto}
    all_results[setting] = {}
    for kind in kinds:
      all_results[setting][kind] = {}
      for name, fraction in zip(names, fractions + [AUTO]):
        workdir = os.path.join(out, setting, kind, name)
        path = os.path.join(workdir, 'result.json')
        if os.path.exists(path) and not rerun:
          # A finished run (or, with --report_only, whatever exists).
          with open(path) as f:
            all_results[setting][kind][name] = json.load(f)
          continue
        if report_only:
          continue
        if rerun and os.path.isdir(workdir):
          import shutil  # pylint: disable=g-import-not-at-top
          shutil.rmtree(workdir)
        os.makedirs(workdir, exist_ok=True)
        is_auto = fraction == AUTO
        n = int(round((cap_fraction if is_auto else fraction) * steps))
        if is_auto and n == 0:
          continue
        if setting == 'synthetic':
          r = synthetic_run(kind, n, auto if is_auto else None, args, seed,
                            log)
        else:
          r = photo_run(kind, n, auto if is_auto else None, steps, seed,
                        workdir, full, quick, log)
        with open(path, 'w') as f:
          json.dump(r, f, indent=1)
        all_results[setting][kind][name] = r
    if setting == 'synthetic':
      rate = float(np.log2(synthetic_args(steps)['k']))
      lam, _ = synthetic_collapse.data_covariance(64, 2.0, seed)
      metas[setting]['waterfilling_dim_data'] = analysis.waterfilling_dim(
          lam, rate)
  md = '\n'.join(table(s, all_results[s], metas[s]) for s in settings)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(md)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump({'meta': metas, 'results': all_results}, f, indent=1)
  plot(all_results, metas, os.path.join(out, 'warmup_length.png'))
  return {'results': all_results, 'meta': metas, 'markdown': md}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  a = parse_args(argv)
  fractions = [float(f) for f in a.fractions.split(',')]
  settings, kinds = a.settings.split(','), a.kinds.split(',')
  if any(not 0 <= f < 1 for f in fractions):
    raise ValueError('--fractions must be in [0, 1).')
  for s in settings:
    if s not in SETTINGS:
      raise ValueError(f'--settings: unknown {s!r}; choose from {SETTINGS}.')
  for k in kinds:
    if k not in KINDS:
      raise ValueError(f'--kinds: unknown {k!r}; choose from {KINDS}.')
  syn_steps, photo_steps, every = a.synthetic_steps, a.photo_steps, (
      a.auto_every)
  if a.full:
    syn_steps, photo_steps = 4000, 1500
  if a.quick:
    syn_steps, photo_steps, kinds, every = 60, 8, ['vq'], 0.125
    fractions = [0.5]
  t0 = time.perf_counter()
  res = study(settings, kinds, fractions, not a.no_auto, syn_steps,
              photo_steps, every, a.auto_patience, a.auto_tolerance, a.seed,
              a.out, a.full, a.quick, a.rerun, a.report_only)
  print(res['markdown'])
  print(f'{time.perf_counter() - t0:.0f} s. Outputs in {a.out}: '
        'results.md, results.json, warmup_length.png')
  return res


if __name__ == '__main__':
  main()
