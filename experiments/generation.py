r"""Generation from each bottleneck's latent at equal bits, with one prior.

The question: at equal bits per image, does a PCA latent give a prior that
generates as well as VQ tokens do? Every cell is an autoencoder of
experiments/budget_sweep.py (the same cell names, configs and run folders,
so `--out` of a budget sweep reuses its trained runs) whose latent, at the
study's budget, is modelled by the same MaskGIT prior (`pcavae.generation`:
one transformer size, the same training steps and batch, the same decoding
steps and temperature):

  vq, fsq         their code indices (K = 1024 / 1000 codes per location)
  lfq             its code index (2^10 = 1024 codes per location)
  pca_<grid>      the coefficients water-filled to the budget (`--budget`),
                  location by location, components in variance order
  kl              its posterior means quantized like the PCA coefficients,
                  2 bits each, with 5 channels so the bits are equal

For each: bits per image; rFID (the held-out images through the latent the
prior models and back: the prior's ceiling), gFID, precision and recall
(Kynkaenniemi et al. 2019, k = 3) of N samples, all against the same first
N held-out images through the same Inception (`evaluators.SampleMetrics`);
the prior's held-out loss; for PCA and KL the share of each component's
variance the samples reproduce (`evaluators.coefficient_variance_share`);
and a grid of samples. Then latent interpolation between held-out pairs,
PCA (float coefficients, and at the budget) beside VQ, with the LPIPS step
along the path (`traversal.interpolation_study`).

Sizes:
  --quick   the budget sweep's quick models (32 px photo_patches, 600
            steps) on a 4x4 latent (global: N = 64), a 160-bit budget
            (VQ K = 1024 at 16 locations), the `small` prior (64 wide, 2
            blocks) for 2000 steps, N = 256 samples. CPU-sized: short
            sequences and a small prior, so the numbers say little about
            what a real prior does; the full size is the experiment.
  full      the budget sweep's full cells (64 px, the configs' steps), a
            2560-bit budget, the `base` prior (256 wide, 8 blocks) for 50k
            steps, N = 5000. A GPU job:

  python experiments/generation.py --quick
  python -m pcavae.metrics.convert_inception                 # once
  python experiments/generation.py --dataset=image_folder \
    --dataset_path=/data/celeba_hq_256 --out=workdirs/generation

Outputs in `--out`: `results.json`, `results.md` (the table),
`samples.png` (a row of samples per cell), `interpolation.png`,
`variance_share.png`, `samples/<cell>.png` (more samples per cell),
`runs/`, `priors/`. Resumable: trained runs and priors are reused, and a
finished cell (`results/<cell>.json`) is not evaluated again.
"""

import json
import os
import time
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
import numpy as np

from pcavae import data
from pcavae import evaluators
from pcavae import generation
from pcavae import harness
from pcavae import sweep
from pcavae import train
from pcavae import traversal
from pcavae import viz

# Cell name -> the rate the prior models it at (`generation.make_latent`).
SIZES = {
    'quick': dict(
        sweep='quick', budget=160,
        cells=(('vq_4x4_k1024', {}), ('fsq_4x4_l8555', {}),
               ('lfq_4x4_d10', {}), ('pca_4x4_q50', {'budget': 160}),
               ('pca_global_q100', {'budget': 160}),
               ('kl_4x4_c5', {'bits': 2})),
        prior_size='small', prior_steps=2000, prior_batch=64, num=256,
        pairs=3, interpolation_steps=9,
        interpolate=('pca_4x4_q50', 'vq_4x4_k1024')),
    'full': dict(
        sweep='full', budget=2560,
        cells=(('vq_16x16_k1024', {}), ('fsq_16x16_l8555', {}),
               ('lfq_16x16_d10', {}), ('pca_16x16_q40', {'budget': 2560}),
               ('pca_global_q100', {'budget': 2560}),
               ('kl_16x16_c5', {'bits': 2})),
        prior_size='base', prior_steps=50000, prior_batch=256, num=5000,
        pairs=4, interpolation_steps=9,
        interpolate=('pca_16x16_q40', 'vq_16x16_k1024')),
}
DECODE_STEPS = 12


def _rate_name(rate: Dict[str, int]) -> str:
  return '_'.join(f'{k}{v}' for k, v in sorted(rate.items())) or 'native'


def held_out(config, num: int) -> np.ndarray:
  """The first `num` held-out images, `(num, R, R, 3)` in [-1, 1]."""
  source = data.get_splits(config.dataset, config.resolution).eval
  if len(source) < num:
    raise ValueError(f'The held-out split has {len(source)} images; lower '
                     f'--num={num}.')
  return np.concatenate([im[m] for im, m in data.eval_batches(
      source, global_batch_size=64, num_examples=num)])


def _batched(fn, x: np.ndarray, batch: int) -> np.ndarray:
  return np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def run_cell(name: str, rate: Dict[str, int], s: Dict[str, Any], out: str,
             kw: Dict[str, Any], settings: generation.PriorSettings,
             num: int) -> Dict[str, Any]:
  """Trains (or reuses) the cell's autoencoder and prior, samples and
  measures; the row is cached in `results/<cell>.json`."""
  path = os.path.join(out, 'results', f'{name}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  cell = sweep.cellby_name(name, s['sweep'])
  config = sweep.cell_config(cell, s['sweep'], **kw)
  record = sweep.train_cell(cell, config, out)
  workdir = sweep.run_dir(out, name)
  prior_dir = os.path.join(out, 'priors', f'{name}__{_rate_name(rate)}')
  t0 = time.perf_counter()
  info = generation.train_prior(workdir, prior_dir, settings,
                                decode_steps=DECODE_STEPS, **rate)
  prior_minutes = (time.perf_counter() - t0) / 60
  prior = generation.Prior(prior_dir)
  t0 = time.perf_counter()
  samples, _ = prior.sample(num, seed=0, batch_size=64)
  sample_seconds = time.perf_counter() - t0
  real = held_out(config, num)
  latent = prior.latent
  recon = _batched(lambda x: latent.decode(latent.encode(x)), real, 64)
  source = data.get_splits(config.dataset, config.resolution).eval
  # Every cell shares the reference statistics (one dataset and size).
  metrics = evaluators.SampleMetrics(config, out)
  gen = metrics(samples, source)
  rec = metrics(recon, source)
  _, model, variables, _ = train.restore_model(workdir)
  share = evaluators.coefficient_variance_share(model, variables, samples,
                                                real)
  os.makedirs(os.path.join(out, 'samples'), exist_ok=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(viz.sample_grid(samples[:64])).save(
      os.path.join(out, 'samples', f'{name}.png'))
  np.save(os.path.join(out, 'samples', f'{name}_first16.npy'), samples[:16])
  row = {
      'cell': name, 'label': cell.get('label') or
      f"PCA {cell['grid']} Q={cell['q']}", 'family': cell['family'],
      'rate': rate, 'latent': info['latent'],
      'bits_per_image': info['bits_per_image'],
      'sequence_length': info['prior']['length'],
      'largest_alphabet': info['prior']['vocab'],
      'prior_params': info['prior']['params'],
      'prior_params_blocks': info['prior']['params_blocks'],
      'prior_sample_gflops': info['prior']['sample_gflops'],
      'prior_train_loss_bits': info['final_loss_bits'],
      'prior_heldout_loss_bits': info['heldout_loss_bits'],
      'prior_heldout_bits_per_image': (info['heldout_loss_bits']
                                       * info['prior']['length']),
      'num': num, 'rfid': _fid(rec), 'recon_psnr': _psnr(real, recon),
      'gfid': _fid(gen), 'precision': gen['gen/precision'],
      'recall': gen['gen/recall'],
      'recon_precision': rec['gen/precision'],
      'recon_recall': rec['gen/recall'],
      'variance_share': None if share is None else share.tolist(),
      'variance_share_mean': None if share is None else float(
          np.nanmean(share)),
      'ae_steps': record['steps'], 'ae_train_minutes': record['train_minutes'],
      'prior_minutes': prior_minutes, 'sample_seconds': sample_seconds,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  harness.write_json(path, row)
  return row


def _fid(m: Dict[str, float]) -> float:
  return next(v for k, v in m.items() if k.startswith('gen/gfid_'))


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
  mse = np.mean(np.square((x - y) / 2.0), axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def interpolation(s: Dict[str, Any], out: str, kw: Dict[str, Any],
                  pairs: int, num_steps: int) -> Dict[str, Any]:
  """PCA (float coefficients and at the budget) beside VQ between
  held-out pairs: the figure and the LPIPS steps."""
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  pca_name, vq_name = s['interpolate']
  runs = {}
  config = None
  for name in (pca_name, vq_name):
    config, model, variables, _ = train.restore_model(
        sweep.run_dir(out, name))
    label = name
    if name.startswith('pca_'):
      runs[f'{name} float'] = (model, variables)
      budgeted = config.copy_and_resolve_references()
      budgeted.model.bottleneck.coefficient_bit_budget = s['budget']
      configlib.validate(budgeted)
      label = f'{name} {s["budget"]} bits'
      runs[label] = (train.create_model(budgeted), variables)
    else:
      runs[label] = (model, variables)
  real = held_out(config, 2 * pairs + 1)
  # Pairs spread over the held-out images: i and i + pairs.
  pair_images = np.stack([real[:pairs], real[pairs:2 * pairs]], axis=1)
  figure, numbers = traversal.interpolation_study(
      runs, pair_images, num_steps, traversal.lpips_distance(),
      title=f'Interpolation in the encoder space, through each bottleneck '
      f'({s["budget"]} bits per image unless "float")')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(figure).save(os.path.join(out, 'interpolation.png'))
  return numbers


def report(rows: List[Dict[str, Any]], interp: Optional[Dict[str, Any]],
           out: str, meta: Dict[str, Any]) -> str:
  """Writes results.json / results.md and the figures; returns the md."""
  fmt = harness.fmt
  lines = [f"# Generation at {meta['budget']} bits per image", '',
           f"{meta['size']} size; prior `{meta['prior_size']}` "
           f"({meta['prior_steps']} steps, batch {meta['prior_batch']}, "
           f"{DECODE_STEPS} decoding steps, temperature 1); N = "
           f"{meta['num']} samples against the first N held-out images.", '']
  header = ['cell', 'bits/image', 'tokens', 'prior params', 'GFLOP/sample',
            'held-out loss (bits/token)', 'rFID', 'gFID', 'precision',
            'recall', 'variance share']
  body = [[r['label'], fmt(r['bits_per_image'], '.0f'),
           str(r['sequence_length']), f"{r['prior_params']:,}",
           fmt(r['prior_sample_gflops'], '.2f'),
           fmt(r['prior_heldout_loss_bits'], '.3f'), fmt(r['rfid'], '.1f'),
           fmt(r['gfid'], '.1f'), fmt(r['precision'], '.3f'),
           fmt(r['recall'], '.3f'), fmt(r['variance_share_mean'], '.2f')]
          for r in rows]
  lines += harness.markdown_table(header, body)
  if interp:
    lines += ['', '## Interpolation (LPIPS step along the path)', '']
    keys = ['lpips_step_mean', 'lpips_step_max', 'evenness', 'detour']
    lines += harness.markdown_table(
        ['latent'] + keys,
        [[k] + [fmt(v.get(m), '.3f') for m in keys]
         for k, v in interp.items()])
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(text)
  harness.write_json(os.path.join(out, 'results.json'),
                     {'meta': meta, 'rows': rows, 'interpolation': interp})
  _figures(rows, out)
  return text


def _figures(rows: List[Dict[str, Any]], out: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  strips = {}
  for r in rows:
    path = os.path.join(out, 'samples', f"{r['cell']}_first16.npy")
    if os.path.exists(path):
      strips[f"{r['label']} ({r['bits_per_image']:.0f} b)"] = np.load(path)[:8]
  if strips:
    Image.fromarray(viz.labeled_rows(
        strips, title='Samples (MaskGIT prior, same size and steps)')).save(
        os.path.join(out, 'samples.png'))
  shares = {r['label']: r['variance_share'] for r in rows
            if r['variance_share']}
  if shares:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, share in shares.items():
      ax.plot(np.arange(1, len(share) + 1), share, marker='.', label=label)
    ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('component (variance order)')
    ax.set_ylabel('sample variance / held-out')
    ax.set_title('Variance the samples reproduce, per component')
    ax.legend(fontsize=8)
    fig.tight_layout()
    Image.fromarray(viz.figure_to_array(fig)).save(
        os.path.join(out, 'variance_share.png'))
    plt.close(fig)


def run(out: str, size: str, steps: int = 0, prior_steps: int = 0,
        num: int = 0, cells: Optional[List[str]] = None, dataset: str = '',
        dataset_path: str = '', pairs: int = 0,
        prior_size: Optional[str] = None,
        eval_images: Optional[int] = None) -> str:
  s = dict(SIZES[size])
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  kw = dict(steps=steps, eval_images=eval_images, rfid_images=0,
            dataset=dataset, dataset_path=dataset_path)
  num = num or s['num']
  settings = generation.PriorSettings(
      size=prior_size or s['prior_size'],
      steps=prior_steps or s['prior_steps'], batch_size=s['prior_batch'],
      eval_images=min(256, max(64, num)),
      log_every=max(1, min(500, (prior_steps or s['prior_steps']) // 5)),
      checkpoint_every=max(1, (prior_steps or s['prior_steps']) // 4))
  chosen = [(n, r) for n, r in s['cells'] if cells is None or n in cells]
  rows = []
  t_start = time.perf_counter()
  for name, rate in chosen:
    row = run_cell(name, rate, s, out, kw, settings, num)
    rows.append(row)
    print(f"{name}: {row['bits_per_image']:.0f} bits, rFID {row['rfid']:.1f}"
          f", gFID {row['gfid']:.1f}, precision {row['precision']:.3f}, "
          f"recall {row['recall']:.3f} "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)
  interp = None
  done = {n for n, _ in chosen}
  if all(n in done for n in s['interpolate']):
    interp = interpolation(s, out, kw, pairs or s['pairs'],
                           s['interpolation_steps'])
  meta = {'size': size, 'budget': s['budget'], 'num': num,
          'prior_size': settings.size, 'prior_steps': settings.steps,
          'prior_batch': settings.batch_size,
          'prior_shape': generation.SIZES[settings.size],
          'wall_minutes_this_call': (time.perf_counter() - t_start) / 60}
  return report(rows, interp, out, meta)


def _define_flags():
  flags.DEFINE_bool('quick', False, 'CPU size (see the module docstring).')
  flags.DEFINE_string('out', None, 'Output directory (default workdirs/'
                      'generation_quick or workdirs/generation).')
  flags.DEFINE_integer('steps', 0, 'Autoencoder steps per cell; 0: the '
                       'budget sweep\'s.')
  flags.DEFINE_integer('prior_steps', 0, 'Prior steps; 0: the size\'s.')
  flags.DEFINE_integer('num', 0, 'Samples per cell; 0: the size\'s.')
  flags.DEFINE_enum('prior_size', None, list(generation.SIZES),
                    'Prior size; default: the size\'s.')
  flags.DEFINE_integer('pairs', 0, 'Interpolation pairs; 0: the size\'s.')
  flags.DEFINE_integer('eval_images', None, 'Held-out images of the '
                       'autoencoders\' own final eval (default: the budget '
                       'sweep\'s); the study\'s metrics use --num.')
  flags.DEFINE_list('cells', None, 'Only these cells (default: all of the '
                    'size).')
  flags.DEFINE_string('dataset', '', 'config.dataset.name override.')
  flags.DEFINE_string('dataset_path', '', 'config.dataset.path override.')


def main(argv):
  del argv
  f = flags.FLAGS
  size = 'quick' if f.quick else 'full'
  out = f.out or os.path.join(harness.WORKDIRS, 'generation_quick'
                              if f.quick else 'generation')
  t0 = time.perf_counter()
  text = run(out, size, steps=f.steps, prior_steps=f.prior_steps, num=f.num,
             cells=f.cells, dataset=f.dataset, dataset_path=f.dataset_path,
             pairs=f.pairs, prior_size=f.prior_size,
             eval_images=f.eval_images)
  print(text)
  print(f'wall {(time.perf_counter() - t0) / 60:.1f} min. Outputs in {out}: '
        'results.json/.md, samples.png, interpolation.png, '
        'variance_share.png, samples/, runs/, priors/')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
