r"""Reconstruction quality against *true* bits per image: PCA-VAE vs. quantizers.

The PCA-VAE paper's budget figure counts each PCA coefficient as a 32-bit
float that is never quantized. Here every PCA point is also evaluated with
its coefficients actually quantized (pcavae/bits.py): at a fixed b bits per
coefficient and with a bit budget per image allocated by reverse
water-filling; the budgets are the baselines' own bit counts, so PCA and
quantizers meet at equal bits. Each trained PCA model is evaluated at every
setting (quantization happens at eval only, so no retraining).

Cells (one training run each, `<out>/runs/<cell>`):
  pca_<grid>_q<p>     PCA-VAE on a latent grid (`8x8`: one PCA per location
                      of an 8x8xD latent; `global`: the whole latent as one
                      vector, MLP-mapped to N) with Q = p% of D (of N)
  <family>_<grid>_*   baselines with the same encoder/decoder
Settings of a PCA cell: `float32` (the paper's count), `b<n>` (n bits per
coefficient), `wf<B>` (B bits per image, water-filled).

Sizes:
  --quick   32 px photo_patches, D = 32 (global N = 64), channels 16/32(/32),
            600 steps per cell, grids {global, 4x4, 8x8} x Q/D {25, 50,
            100}%, baselines VQ (K = 16, 1024; 8x8 and 4x4), FSQ (8,5,5,5),
            SimVQ (K = 1024), KL (4 ch); eval on 256 held-out crops; no rFID
            (Inception costs ~0.25 s per image on a 2-core CPU;
            `--rfid_images=N` turns it on). About 10 min on 2 CPU cores.
  full      the configs' own 64 px models (D = 256, the 100k steps of
            configs/*.py), grids {global, 4x4, 8x8, 16x16} x Q/D {20, 40, 60,
            80, 100}%, baselines VQ / SimVQ / VQGAN-FC / FSQ / LFQ at two
            codebook sizes each and KL, rFID on 1000 images. A GPU job:

  python experiments/budget_sweep.py --quick                 # CPU, minutes
  python -m pcavae.metrics.convert_inception                 # once, for rFID
  python experiments/budget_sweep.py --dataset=image_folder \
    --dataset_path=/data/celeba_hq_256 --out=workdirs/budget_sweep
  python experiments/budget_sweep.py --steps=20000 ...      # shorter runs

Outputs in `--out`: `results.json` (every row plus run metadata),
`results.csv`, `results.md` (tables, incl. PCA vs each baseline at equal
bits), `budget_curve.png` (metrics against bits per image, log x),
`radar.png` (min-max normalised, 1 = best), `grids/<cell>__<setting>.png`
(held-out originals over reconstructions). Resumable: a finished cell
(`runs/<cell>/sweep_done.json`) is not retrained and a finished evaluation
(`evals/<cell>__<setting>.json`) is not repeated; delete them to redo.
`--report_only` rewrites the tables and figures from what exists.
"""

import copy
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pcavae import bits  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import configlib  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import evaluators  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from pcavae import viz  # pylint: disable=g-import-not-at-top,wrong-import-position

# Encoder stages per latent grid (the last entry is followed by the 1x1 conv
# to D); `global` flattens the 4x4 latent and maps it to N = global_dim.
SIZES = {
    'quick': dict(
        resolution=32, latent_dim=32, global_dim=64, num_res_layers=1,
        steps=600, eval_images=256, rfid_images=0, spectra_images=128,
        channels={'16x16': (32,), '8x8': (16, 32), '4x4': (16, 32, 32),
                  'global': (16, 32, 32)},
        grids=('global', '4x4', '8x8'), fractions=(25, 50, 100),
        baselines=('vq_8x8_k16', 'vq_8x8_k1024', 'fsq_8x8_l8555',
                   'simvq_8x8_k1024', 'vq_4x4_k1024', 'kl_8x8_c4')),
    'full': dict(
        resolution=64, latent_dim=256, global_dim=256, num_res_layers=6,
        steps=0, eval_images=-1, rfid_images=1000, spectra_images=256,
        channels={'16x16': (128, 256), '8x8': (64, 128, 256),
                  '4x4': (32, 64, 128, 256), 'global': (32, 64, 128, 256)},
        grids=('global', '4x4', '8x8', '16x16'),
        fractions=(20, 40, 60, 80, 100),
        baselines=('vq_16x16_k1024', 'vq_16x16_k16384', 'simvq_16x16_k1024',
                   'simvq_16x16_k8192', 'vqgan_fc_16x16_k1024',
                   'vqgan_fc_16x16_k8192', 'fsq_16x16_l8555',
                   'fsq_16x16_l88865', 'lfq_16x16_d10', 'lfq_16x16_d14',
                   'kl_16x16_c4', 'vq_8x8_k1024', 'vq_4x4_k1024')),
}

# Baseline name -> (config family, group on the plots, bottleneck keys).
# The grid is the second field of the name.
BASELINES = {
    'vq': ('vqvae', 'VQ-VAE', 'codebook_size'),
    'simvq': ('simvq', 'SimVQ', 'codebook_size'),
    'vqgan_fc': ('vqgan_fc', 'VQGAN-FC', 'codebook_size'),
    'fsq': ('fsq', 'FSQ', 'levels'),
    'lfq': ('lfq', 'LFQ', 'code_dim'),
    'kl': ('kl', 'KL-VAE', 'latent_channels'),
}
DEFAULT_BITS = (32, 8, 6, 4)


# ---------------------------------------------------------------------------
# Cells and configs.
# ---------------------------------------------------------------------------


def pca_cells(size: str, grids, fractions) -> List[Dict]:
  s = SIZES[size]
  cells = []
  for grid in grids:
    n = s['global_dim'] if grid == 'global' else s['latent_dim']
    for p in fractions:
      q = max(1, int(round(n * p / 100)))
      cells.append({'name': f'pca_{grid}_q{p}', 'family': 'pcavae',
                    'grid': grid, 'q': q, 'q_frac': p,
                    'group': f'PCA {grid}'})
  return cells


def _parse_baseline(name: str) -> Dict:
  """`vq_8x8_k1024` -> the cell dict (family, grid, bottleneck keys)."""
  for prefix in sorted(BASELINES, key=len, reverse=True):
    if name.startswith(prefix + '_'):
      break
  else:
    raise ValueError(f'Unknown baseline {name!r}; prefixes: {list(BASELINES)}')
  grid, arg = name[len(prefix) + 1:].split('_')
  family, group, key = BASELINES[prefix]
  value = arg[1:]
  if key == 'levels':
    value = tuple(int(c) for c in value)       # l8555 -> (8, 5, 5, 5)
    label = 'L=' + ','.join(str(c) for c in value)
  else:
    value = int(value)
    label = {'codebook_size': f'K={value}', 'code_dim': f'd={value}',
             'latent_channels': f'{value} ch'}[key]
  return {'name': name, 'family': family, 'grid': grid, 'group': group,
          'overrides': {key: value}, 'label': f'{group} {label} {grid}'}


def cell_config(cell: Dict, size: str, steps: int = 0,
                eval_images: Optional[int] = None,
                rfid_images: Optional[int] = None, dataset: str = '',
                dataset_path: str = ''):
  """The training config of a cell."""
  s = SIZES[size]
  spec = os.path.join(ROOT, 'configs', cell['family'] + '.py')
  if cell['family'] == 'pcavae':
    setting = 'global' if cell['grid'] == 'global' else 'spatial4'
    spec += f':setting={setting}' + (',runlocal' if size == 'quick' else '')
  elif size == 'quick':
    spec += ':runlocal'
  c = configlib.load(spec)
  c.resolution = s['resolution']
  c.model.channels = s['channels'][cell['grid']]
  c.model.latent_dim = s['latent_dim']
  c.model.num_res_layers = s['num_res_layers']
  b = c.model.bottleneck
  if cell['family'] == 'pcavae':
    b.mode = 'global' if cell['grid'] == 'global' else 'spatial'
    b.num_components = cell['q']
    b.global_dim = s['global_dim'] if cell['grid'] == 'global' else None
    b.max_update_norm = 0.1 if b.mode == 'spatial' else None
  else:
    for k, v in cell['overrides'].items():
      b[k] = v
  if steps or s['steps']:
    c.num_train_steps = steps or s['steps']
  # One eval, at the end; checkpoints only at the end (and on SIGTERM).
  c.eval_every_steps = c.num_train_steps
  c.checkpoint_every_steps = c.num_train_steps
  c.log_every_steps = min(c.log_every_steps, c.num_train_steps)
  c.eval.num_examples = s['eval_images'] if eval_images is None else \
      eval_images
  c.eval.rfid_num_images = s['rfid_images'] if rfid_images is None else \
      rfid_images
  c.eval.spectra_num_images = s['spectra_images']
  c.tensorboard = False
  if dataset:
    c.dataset.name = dataset
  if dataset_path:
    c.dataset.path = dataset_path
  configlib.validate(c)
  return c


def settings_for(cell: Dict, config, bit_depths, budgets) -> List[Dict]:
  """The eval settings of a cell: PCA quantizations, or the baseline."""
  if cell['family'] != 'pcavae':
    return [{'setting': 'native', 'kind': 'baseline'}]
  n = bits.num_tokens(config) * cell['q']        # coefficients per image
  out = []
  for b in bit_depths:
    if b == bits.FLOAT_BITS:
      out.append({'setting': 'float32', 'kind': 'pca_float',
                  'coefficient_bits': b})
    else:
      out.append({'setting': f'b{b}', 'kind': 'pca_fixed',
                  'coefficient_bits': b})
  for budget in budgets:
    if 0 < budget <= n * bits.MAX_COEFFICIENT_BITS:
      out.append({'setting': f'wf{budget}', 'kind': 'pca_waterfill',
                  'coefficient_bit_budget': int(budget)})
  return out


def auto_budgets(baseline_cells, size, **kw) -> List[int]:
  """The baselines' own bit counts, near-duplicates (< 2% apart) merged."""
  values = sorted({bits.latent_bits(cell_config(c, size, **kw))
                   for c in baseline_cells})
  out = []
  for v in values:
    if not out or v > out[-1] * 1.02:
      out.append(v)
  return out


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------


def _json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(tmp, path)  # a killed sweep never leaves half a file


def train_cell(cell: Dict, config, out: str) -> Dict:
  """Trains a cell unless `runs/<cell>/sweep_done.json` exists."""
  workdir = os.path.join(out, 'runs', cell['name'])
  done = os.path.join(workdir, 'sweep_done.json')
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  logging.info('Training %s in %s.', cell['name'], workdir)
  t0 = time.perf_counter()
  final = train.train_and_evaluate(config, workdir)
  record = {'final': final, 'train_minutes': (time.perf_counter() - t0) / 60,
            'steps': int(final['step'])}
  _json(done, record)
  return record


def _row_from_metrics(metrics: Dict) -> Dict:
  row = {'psnr': metrics.get('eval/psnr'), 'ssim': metrics.get('eval/ssim'),
         'lpips': metrics.get('eval/lpips_alex'),
         'bits_per_image': metrics.get('eval/bits_per_image'),
         'entropy_bits_per_image': metrics.get('eval/entropy_bits_per_image'),
         'num_images': metrics.get('eval/num_images'),
         'codebook_usage': metrics.get('eval/codebook_usage')}
  for k, v in metrics.items():
    if k.startswith('eval/rfid_'):
      row['rfid'], row['rfid_images'] = v, int(k.rsplit('_', 1)[1])
  return row


def evaluate_setting(cell: Dict, setting: Dict, out: str, record: Dict
                     ) -> Dict:
  """Eval metrics of a trained cell at one setting (cached on disk)."""
  path = os.path.join(out, 'evals', f"{cell['name']}__{setting['setting']}"
                      '.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  workdir = os.path.join(out, 'runs', cell['name'])
  t0 = time.perf_counter()
  if setting['kind'] in ('baseline', 'pca_float'):
    # What training's final eval measured, with the same eval config.
    metrics = record['final']
  else:
    config, _, variables, step = train.restore_model(workdir)
    config = copy.deepcopy(config)
    b = config.model.bottleneck
    b.coefficient_bits = setting.get('coefficient_bits', bits.FLOAT_BITS)
    b.coefficient_bit_budget = setting.get('coefficient_bit_budget')
    # Training's evals saved the spectra; the settings change only the codes.
    config.eval.units = tuple(u for u in configlib.eval_units(config)
                              if u != 'spectra')
    configlib.validate(config)
    model = train.create_model(config)
    evaluator = evaluators.Evaluator(
        model, config, sharding.make_mesh(config), out,
        lambda s: {k: v for k, v in s.items() if k != 'params'})
    splits = data.get_splits(config.dataset, config.resolution)
    metrics, images = evaluator(variables, splits.eval, step)
    grid = images['reconstructions']
    os.makedirs(os.path.join(out, 'grids'), exist_ok=True)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(grid).save(os.path.join(
        out, 'grids', f"{cell['name']}__{setting['setting']}.png"))
  row = {'cell': cell['name'], 'family': cell['family'], 'grid': cell['grid'],
         'group': cell['group'], 'q': cell.get('q'),
         'q_frac': cell.get('q_frac'), 'steps': record['steps'],
         'train_minutes': record['train_minutes'],
         'eval_seconds': time.perf_counter() - t0, **setting,
         **_row_from_metrics(metrics)}
  row['label'] = cell.get('label') or (
      f"PCA {cell['grid']} Q={cell['q']} {setting['setting']}")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _json(path, row)
  return row


def run(out: str, size: str = 'quick', steps: int = 0, grids=None,
        fractions=None, bit_depths=DEFAULT_BITS, budgets=None,
        baselines=None, eval_images: Optional[int] = None,
        rfid_images: Optional[int] = None, dataset: str = '',
        dataset_path: str = '', report_only: bool = False) -> List[Dict]:
  """Trains and evaluates every cell (resumably), then writes the report.

  Args:
    out: output directory.
    size: 'quick' or 'full' (`SIZES`).
    steps: train steps per cell (0: the size's default).
    grids, fractions: the PCA grid (None: the size's default).
    bit_depths: fixed coefficient bits to evaluate (32 = float).
    budgets: water-filling budgets in bits per image; None: the baselines'
      bit counts (`auto_budgets`).
    baselines: baseline cell names (None: the size's default).
    eval_images, rfid_images: eval sizes (None: the size's default).
    dataset, dataset_path: `config.dataset.name` / `.path` overrides.
    report_only: only rewrite the report from finished evals.

  Returns:
    The result rows.
  """
  s = SIZES[size]
  t_start = time.perf_counter()
  # Absolute: orbax rejects relative checkpoint paths, and the checkpointer
  # would then set a good checkpoint aside as damaged.
  out = os.path.abspath(out)
  kw = dict(steps=steps, eval_images=eval_images, rfid_images=rfid_images,
            dataset=dataset, dataset_path=dataset_path)
  cells = pca_cells(size, grids or s['grids'], fractions or s['fractions'])
  base = [_parse_baseline(b) for b in (s['baselines'] if baselines is None
                                       else baselines)]
  if budgets is None:
    budgets = auto_budgets(base, size, **kw)
  os.makedirs(out, exist_ok=True)
  rows = []
  for cell in base + cells:
    config = cell_config(cell, size, **kw)
    done = os.path.join(out, 'runs', cell['name'], 'sweep_done.json')
    if report_only and not os.path.exists(done):
      continue
    record = train_cell(cell, config, out)
    for setting in settings_for(cell, config, bit_depths, budgets):
      path = os.path.join(out, 'evals',
                          f"{cell['name']}__{setting['setting']}.json")
      if report_only and not os.path.exists(path):
        continue
      row = evaluate_setting(cell, setting, out, record)
      print(f"{cell['name']} {setting['setting']}: "
            f"{row['bits_per_image']:.0f} bits, PSNR {row['psnr']:.2f} "
            f"({time.perf_counter() - t_start:.0f} s)", flush=True)
      rows.append(row)
  meta = {'size': size, 'budgets': list(budgets),
          'bit_depths': list(bit_depths),
          'wall_minutes_this_call': (time.perf_counter() - t_start) / 60,
          'train_minutes_total': sum({r['cell']: r['train_minutes']
                                      for r in rows}.values()),
          'eval_seconds_total': sum(r['eval_seconds'] for r in rows
                                    if r['kind'] in ('pca_fixed',
                                                     'pca_waterfill'))}
  report(rows, out, meta)
  return rows


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------

CSV_KEYS = ('cell', 'group', 'grid', 'q', 'q_frac', 'setting', 'kind',
            'bits_per_image', 'entropy_bits_per_image', 'psnr', 'ssim',
            'lpips', 'rfid', 'rfid_images', 'codebook_usage', 'steps',
            'train_minutes', 'eval_seconds', 'num_images', 'label')


def _f(v, spec):
  return '-' if v is None else format(v, spec)


def radar_rows(rows: List[Dict], budget: Optional[float] = None
               ) -> List[Dict]:
  """The models on the radar chart: every baseline, the best PCA of each
  grid at a water-filled budget (default: the budget of the baseline with
  the most rows nearby, VQ K=1024 8x8 when present), and the best PCA with
  32-bit floats (the paper's way of counting)."""
  baselines = [r for r in rows if r['kind'] == 'baseline']
  if budget is None:
    ref = [r for r in baselines if r['cell'] == 'vq_8x8_k1024']
    budget = (ref[0] if ref else (baselines or [{'bits_per_image': 0}])[0]
              )['bits_per_image']
  out = [dict(r) for r in baselines]
  for grid in sorted({r['grid'] for r in rows if r['family'] == 'pcavae'}):
    wf = [r for r in rows if r['grid'] == grid and r['family'] == 'pcavae'
          and r['kind'] == 'pca_waterfill'
          and abs(r['bits_per_image'] - budget) <= 0.02 * budget]
    if wf:
      best = dict(max(wf, key=lambda r: r['psnr']))
      best['label'] = (f"PCA {grid} Q={best['q']}, {best['bits_per_image']:.0f}"
                       ' bits water-filled')
      out.append(best)
  floats = [r for r in rows if r['kind'] == 'pca_float']
  if floats:
    best = dict(max(floats, key=lambda r: r['psnr']))
    best['label'] = (f"PCA {best['grid']} Q={best['q']}, 32-bit floats "
                     f"({best['bits_per_image']:.0f} bits)")
    out.append(best)
  return out


def equal_bits_table(rows: List[Dict]) -> List[str]:
  """For each baseline: the best quantized PCA at no more nominal bits."""
  pca = [r for r in rows if r['kind'] in ('pca_fixed', 'pca_waterfill')]
  lines = ['| baseline | bits | PSNR | SSIM | LPIPS | best PCA at <= bits | '
           'bits | PSNR | SSIM | LPIPS |', '|---|---:|---:|---:|---:|---|---:|'
           '---:|---:|---:|']
  for b in sorted((r for r in rows if r['kind'] == 'baseline'),
                  key=lambda r: r['bits_per_image']):
    cands = [r for r in pca if r['bits_per_image'] <= b['bits_per_image']]
    p = max(cands, key=lambda r: r['psnr']) if cands else None
    right = ('- | - | - | - | -' if p is None else
             f"PCA {p['grid']} Q={p['q']} {p['setting']} | "
             f"{p['bits_per_image']:.0f} | {p['psnr']:.2f} | "
             f"{p['ssim']:.3f} | {_f(p['lpips'], '.3f')}")
    lines.append(f"| {b['label']} | {b['bits_per_image']:.0f} | "
                 f"{b['psnr']:.2f} | {b['ssim']:.3f} | "
                 f"{_f(b['lpips'], '.3f')} | {right} |")
  return lines


def report(rows: List[Dict], out: str, meta: Dict) -> str:
  """Writes results.{json,csv,md}, budget_curve.png and radar.png."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = sorted(rows, key=lambda r: (r['group'], r.get('q') or 0,
                                     r['bits_per_image']))
  _json(os.path.join(out, 'results.json'), {'meta': meta, 'rows': rows})
  with open(os.path.join(out, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, CSV_KEYS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  has_rfid = any(r.get('rfid') is not None for r in rows)
  lines = [f"Budget sweep ({meta['size']}): {len(rows)} evaluations; "
           f"training {meta['train_minutes_total']:.1f} min, quantized "
           f"evals {meta['eval_seconds_total'] / 60:.1f} min.", '',
           '| model | setting | bits / image | entropy-coded bits | PSNR | '
           'SSIM | LPIPS |' + (' rFID |' if has_rfid else ''),
           '|---|---|---:|---:|---:|---:|---:|' + ('---:|' if has_rfid
                                                  else '')]
  for r in rows:
    name = (r['label'] if r['kind'] == 'baseline'
            else f"PCA {r['grid']} Q={r['q']} ({r['q_frac']}%)")
    lines.append(
        f"| {name} | {r['setting']} | {r['bits_per_image']:.0f} | "
        f"{_f(r.get('entropy_bits_per_image'), '.0f')} | {r['psnr']:.2f} | "
        f"{r['ssim']:.3f} | {_f(r.get('lpips'), '.3f')} |"
        + (f" {_f(r.get('rfid'), '.1f')} |" if has_rfid else ''))
  lines += ['', 'Equal true bits: each baseline against the best PCA-VAE '
            'point (any grid, Q and quantization) with no more nominal bits:',
            ''] + equal_bits_table(rows)
  md = '\n'.join(lines) + '\n'
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(md)
  metrics = ('psnr', 'ssim', 'lpips') + (('rfid',) if has_rfid else ())
  if rows:
    Image.fromarray(viz.budget_curve(
        rows, metrics, title='Reconstruction vs. bits per image actually '
        'sent (lines: best per model family at <= bits)')).save(
            os.path.join(out, 'budget_curve.png'))
    Image.fromarray(viz.radar_chart(
        radar_rows(rows), metrics + ('bits_per_image',),
        title='Normalised comparison')).save(os.path.join(out, 'radar.png'))
  return md


def load_results(out: str) -> Dict:
  """`{'meta': ..., 'rows': [...]}` of a finished sweep (for notebooks)."""
  with open(os.path.join(out, 'results.json')) as f:
    return json.load(f)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _define_flags():
  flags.DEFINE_bool('quick', False, 'CPU size (see the module docstring).')
  flags.DEFINE_string('out', None, 'Output directory (default workdirs/'
                      'budget_sweep_quick or workdirs/budget_sweep).')
  flags.DEFINE_integer('steps', 0, 'Train steps per cell; 0: the size '
                       'default (quick 600, full the configs\' 100k).')
  flags.DEFINE_list('grids', None, 'PCA grids: global, 4x4, 8x8, 16x16.')
  flags.DEFINE_list('fractions', None, 'Q as a percentage of D (global: N).')
  flags.DEFINE_list('bits', [str(b) for b in DEFAULT_BITS],
                    'Fixed bits per coefficient to evaluate (32 = float).')
  flags.DEFINE_list('budgets', None, 'Water-filling budgets, bits per image '
                    '(default: the baselines\' bit counts).')
  flags.DEFINE_list('baselines', None, 'Baseline cells, e.g. vq_8x8_k1024, '
                    'fsq_8x8_l8555, lfq_8x8_d10, kl_8x8_c4 (default: the '
                    'size\'s list; an empty value for none).')
  flags.DEFINE_integer('eval_images', None, 'Held-out images per eval.')
  flags.DEFINE_integer('rfid_images', None, 'rFID images (0: off).')
  flags.DEFINE_string('dataset', '', 'config.dataset.name override.')
  flags.DEFINE_string('dataset_path', '', 'config.dataset.path override.')
  flags.DEFINE_bool('report_only', False, 'Only rewrite the report.')


def main(argv):
  del argv
  f = flags.FLAGS
  size = 'quick' if f.quick else 'full'
  out = f.out or os.path.join(ROOT, 'workdirs', 'budget_sweep_quick'
                              if f.quick else 'budget_sweep')
  t0 = time.perf_counter()
  rows = run(out, size, steps=f.steps, grids=f.grids,
             fractions=[int(x) for x in f.fractions] if f.fractions else None,
             bit_depths=[int(x) for x in f.bits],
             budgets=[int(x) for x in f.budgets] if f.budgets else None,
             baselines=[b for b in f.baselines if b] if f.baselines is not None
             else None,
             eval_images=f.eval_images, rfid_images=f.rfid_images,
             dataset=f.dataset, dataset_path=f.dataset_path,
             report_only=f.report_only)
  with open(os.path.join(out, 'results.md')) as fh:
    print(fh.read())
  print(f'{len(rows)} rows; wall {(time.perf_counter() - t0) / 60:.1f} min. '
        f'Outputs in {out}: results.json/.csv/.md, budget_curve.png, '
        'radar.png, grids/, runs/')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
