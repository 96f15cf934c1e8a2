r"""Latent dimension over training: VQ from scratch, VQ with AE warm-up, PCA.

Trains, on the embedded `photo_patches` data with the `runlocal` configs
(32 px, channels 32/64, an 8x8x64 latent, batch 32, Adam 1e-3 cosine, MSE,
1500 steps; configs/common.py):

  vq_scratch  configs/vqvae.py:runlocal             VQ-VAE, K = 1024
  vq_warmup   configs/vqvae.py:runlocal,warmup=N    the same, identity for the
              first N steps, then VQ with a k-means codebook (pcavae/warmup.py)
  pcavae      configs/pcavae.py:runlocal            PCA-VAE, spatial, Q = 16

into `<root>/<run>`, evaluating every `--eval_every` steps. Every eval
measures the spectra of z_e, z_q and the codebook on the same 256 held-out
images (pcavae.evaluators.Spectra). This script then reads the runs'
`metrics.jsonl` and `spectra/` and writes `<root>/results.md`,
`<root>/results.json` and `<root>/warmup_study.png`: the 99%-variance
dimension over training, the final metrics, and the reverse water-filling
prediction (pcavae.analysis.waterfilling_dim at log2 K bits) of the VQ
codebook dimension from each run's own z_e spectrum.

  python experiments/warmup_study.py                      # 3 x 1500 steps
  python experiments/warmup_study.py --steps=600 --warmup_steps=200

A finished run is not retrained (its workdir resumes at its last step and
is only evaluated), so an interrupted study continues where it stopped;
`--runs=vq_scratch` runs a subset; `--report_only` only rewrites the report.
`--quick` is a smoke run of the same script (16 px, channels 8/16, 4 steps
with the warm-up switch at 2 and evals at 2 and 4;
`configlib.shrink_for_smoke_run`), not a measurement.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from pcavae import analysis
from pcavae import bits
from pcavae import configlib
from pcavae import evaluators
from pcavae import harness
from pcavae import train
from pcavae import viz
from pcavae import writers

RUNS = ('vq_scratch', 'vq_warmup', 'pcavae')
LABELS = {'vq_scratch': 'VQ from scratch', 'vq_warmup': 'VQ + AE warm-up',
          'pcavae': 'PCA-VAE (spatial, Q=16)'}
COLORS = {'vq_scratch': 'tab:red', 'vq_warmup': 'tab:blue',
          'pcavae': 'tab:green'}

_ROOT = flags.DEFINE_string('root', os.path.join(harness.WORKDIRS,
                                                 'warmup_study'),
                            'Parent of the per-run workdirs.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Train steps for every run; 0 keeps '
                              'the runlocal default (1500).')
_WARMUP = flags.DEFINE_integer('warmup_steps', 500, 'AE warm-up steps of '
                               'vq_warmup.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 250, 'Steps between evals '
                                   '(each measures the spectra).')
_RUNS = flags.DEFINE_list('runs', list(RUNS), 'Runs to train.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Do not train; '
                                 'write the report from existing workdirs.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: tiny models, 4 steps, '
                           'warm-up 2, evals every 2 '
                           '(configlib.shrink_for_smoke_run).')


def config_family_arg(run: str, warmup_steps: int):
  """`(config family, its argument)` of a run."""
  if run == 'vq_scratch':
    return 'vqvae', 'runlocal'
  if run == 'vq_warmup':
    return 'vqvae', f'runlocal,warmup={warmup_steps}'
  return 'pcavae', 'runlocal'


def config_spec(run: str, warmup_steps: int) -> str:
  return harness.config_spec(*config_family_arg(run, warmup_steps))


def make_config(run: str):
  config = harness.load_config(*config_family_arg(run, _WARMUP.value))
  if _QUICK.value:
    configlib.shrink_for_smoke_run(config, steps=_STEPS.value)
  if _STEPS.value:
    config.num_train_steps = _STEPS.value
  config.eval_every_steps = _EVAL_EVERY.value
  return config


def collect(run: str, workdir: str):
  """Per-eval records and the final spectra of one run."""
  evals = [r for r in writers.read_metrics(workdir) if 'eval/psnr' in r]
  # A resumed, finished run evaluates its last step again: keep the last.
  by_step = {r['step']: r for r in evals}
  history = [by_step[s] for s in sorted(by_step)]
  spectra = evaluators.load_spectra(workdir)
  config = train.load_config(workdir)
  out = {'history': history, 'config_spec': config_spec(run, _WARMUP.value),
         'latent_bits': bits.latent_bits(config)}
  if spectra:
    step, last = spectra[-1]
    out['final_spectra_step'] = step
    k = bits.num_codes(config)
    if k:
      out['waterfilling_dim_z_e'] = analysis.waterfilling_dim(
          np.square(last['z_e']), np.log2(k))
      out['rate_bits_per_token'] = float(np.log2(k))
  return out


def _get(record, key, spec='.0f'):
  return harness.fmt(record.get(key), spec)


def _dims(r) -> str:
  """`z_q dim99 (z_e dim99)[ / used codebook dim99]` of one eval."""
  if r is None or 'spectra/z_q/dim99' not in r:
    return '-'
  cell = f"{r['spectra/z_q/dim99']:.0f} ({r['spectra/z_e/dim99']:.0f})"
  if 'spectra/codebook_used/dim99' in r:
    cell += f" / {r['spectra/codebook_used/dim99']:.0f}"
  return cell


def report(results, root):
  final = []
  for run, res in results.items():
    if not res['history']:
      continue
    f = res['history'][-1]
    cb = (f"{_get(f, 'spectra/codebook/dim99')} / "
          f"{_get(f, 'spectra/codebook_used/dim99')}"
          if 'spectra/codebook/dim99' in f else '-')
    final.append([
        LABELS[run], _get(f, 'eval/psnr', '.2f'), _get(f, 'eval/ssim', '.3f'),
        _get(f, 'eval/lpips_alex', '.4f'), _get(f, 'spectra/z_e/dim99'),
        _get(f, 'spectra/z_q/dim99'), cb, _get(f, 'spectra/z_q/erank', '.1f'),
        _get(f, 'eval/codebook_usage', '.3f'),
        str(res.get('waterfilling_dim_z_e', '-')),
        f"{res.get('minutes', float('nan')):.1f}"])
  lines = harness.markdown_table(
      ['run', 'PSNR', 'SSIM', 'LPIPS', 'z_e dim99', 'z_q dim99',
       'codebook dim99 (all / used)', 'z_q erank', 'codebook usage',
       'water-filling dim (z_e, log2 K bits)', 'train min'], final)
  steps = sorted({r['step'] for res in results.values()
                  for r in res['history']})
  by_step = {run: {r['step']: r for r in res['history']}
             for run, res in results.items()}
  lines += ['', '99%-variance dimension of z_q (z_e in brackets; for VQ, '
            'used codebook after the slash) at each eval step:', '']
  lines += harness.markdown_table(
      ['run'] + [str(s) for s in steps],
      [[LABELS[run]] + [_dims(by_step[run].get(s)) for s in steps]
       for run in results])
  md = '\n'.join(lines) + '\n'
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write(md)
  with open(os.path.join(root, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(root, 'warmup_study.png'))
  return md


def plot(results, path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(14, 4.2), dpi=100)
  fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86,
                      wspace=0.25)
  ax_q, ax_cb, ax_psnr = fig.subplots(1, 3)
  for run, res in results.items():
    h = [r for r in res['history'] if 'spectra/z_q/dim99' in r]
    if not h:
      continue
    steps = [r['step'] for r in h]
    c = COLORS[run]
    ax_q.plot(steps, [r['spectra/z_q/dim99'] for r in h], 'o-', color=c,
              label=f'{LABELS[run]}: z_q')
    ax_q.plot(steps, [r['spectra/z_e/dim99'] for r in h], 'o:', color=c,
              alpha=0.6, label=f'{LABELS[run]}: z_e')
    if 'spectra/codebook_used/dim99' in h[-1]:
      ax_cb.plot(steps, [r['spectra/codebook_used/dim99'] for r in h], 'o-',
                 color=c, label=f'{LABELS[run]}: used codes')
      ax_cb.plot(steps, [r['spectra/codebook/dim99'] for r in h], 'o:',
                 color=c, alpha=0.6, label=f'{LABELS[run]}: all codes')
      if 'waterfilling_dim_z_e' in res:
        ax_cb.axhline(res['waterfilling_dim_z_e'], color=c, ls='--',
                      alpha=0.5, label=f'{LABELS[run]}: water-filling (z_e)')
    ax_psnr.plot(steps, [r['eval/psnr'] for r in h], 'o-', color=c,
                 label=LABELS[run])
    if run == 'vq_warmup':
      for ax in (ax_q, ax_cb, ax_psnr):
        ax.axvline(_WARMUP.value, color=c, alpha=0.3)
  ax_q.set(xlabel='step', ylabel='99%-variance dimension (of D = 64)',
           title='latents: z_q (solid), z_e (dotted)')
  ax_cb.set(xlabel='step', ylabel='99%-variance dimension',
            title='VQ codebook')
  ax_psnr.set(xlabel='step', ylabel='PSNR (dB)', title='eval PSNR')
  for ax in (ax_q, ax_cb, ax_psnr):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle('photo_patches, runlocal (32 px, 8x8x64 latent): latent '
               'dimension over training', fontsize=10)
  Image.fromarray(viz.figure_to_array(fig)).save(path)


def main(argv):
  del argv
  if _QUICK.value:
    # Read by make_config, collect and plot alike.
    flags.FLAGS.steps, flags.FLAGS.warmup_steps = 4, 2
    flags.FLAGS.eval_every = 2
  root = _ROOT.value
  os.makedirs(root, exist_ok=True)
  results = {}
  for run in RUNS:
    workdir = os.path.join(root, run)
    if run in _RUNS.value and not _REPORT_ONLY.value:
      config = make_config(run)
      logging.info('Training %s (%s) in %s.', run, config_spec(
          run, _WARMUP.value), workdir)
      minutes = harness.train_once(config, workdir)['train_minutes']
      with open(os.path.join(workdir, 'study_minutes.txt'), 'a') as f:
        f.write(f'{minutes:.3f}\n')
    if os.path.exists(os.path.join(workdir, writers.METRICS_FILE)):
      results[run] = collect(run, workdir)
      path = os.path.join(workdir, 'study_minutes.txt')
      if os.path.exists(path):
        with open(path) as f:
          results[run]['minutes'] = sum(float(l) for l in f if l.strip())
  md = report(results, root)
  print(md)
  print(f'Outputs in {root}: results.md, results.json, warmup_study.png')


if __name__ == '__main__':
  app.run(main)
