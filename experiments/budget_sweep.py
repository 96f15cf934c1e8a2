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
coefficient), `wf<B>` (B bits per image, water-filled). The cells' names,
configs and settings are `pcavae.sweep`; the report is
experiments/budget_report.py; training and evals go through
`pcavae.harness`.

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

import json
import os
import time
from typing import Dict, List, Optional

from absl import app
from absl import flags

import budget_report  # beside this script
from pcavae import bits
from pcavae import harness
from pcavae import sweep


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


def _eval_path(out: str, cell: Dict, setting: Dict) -> str:
  return os.path.join(out, 'evals',
                      f"{cell['name']}__{setting['setting']}.json")


def evaluate_setting(cell: Dict, setting: Dict, out: str, record: Dict
                     ) -> Dict:
  """Eval metrics of a trained cell at one setting (cached on disk)."""
  path = _eval_path(out, cell, setting)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  t0 = time.perf_counter()
  if setting['kind'] in ('baseline', 'pca_float'):
    # What training's final eval measured, with the same eval config.
    metrics = record['final']
  else:
    metrics, grid = harness.evaluate(
        sweep.run_dir(out, cell['name']),
        {'coefficient_bits': setting.get('coefficient_bits',
                                         bits.FLOAT_BITS),
         'coefficient_bit_budget': setting.get('coefficient_bit_budget')},
        stats_dir=out)
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
  harness.write_json(path, row)
  return row


def run(out: str, size: str = 'quick', steps: int = 0, grids=None,
        fractions=None, bit_depths=sweep.DEFAULT_BITS, budgets=None,
        baselines=None, eval_images: Optional[int] = None,
        rfid_images: Optional[int] = None, dataset: str = '',
        dataset_path: str = '', report_only: bool = False) -> List[Dict]:
  """Trains and evaluates every cell (resumably), then writes the report.

  Args:
    out: output directory.
    size: 'quick' or 'full' (`sweep.SIZES`).
    steps: train steps per cell (0: the size's default).
    grids, fractions: the PCA grid (None: the size's default).
    bit_depths: fixed coefficient bits to evaluate (32 = float).
    budgets: water-filling budgets in bits per image; None: the baselines'
      bit counts (`sweep.auto_budgets`).
    baselines: baseline cell names (None: the size's default).
    eval_images, rfid_images: eval sizes (None: the size's default).
    dataset, dataset_path: `config.dataset.name` / `.path` overrides.
    report_only: only rewrite the report from finished evals.

  Returns:
    The result rows.
  """
  s = sweep.SIZES[size]
  t_start = time.perf_counter()
  # Absolute: orbax rejects relative checkpoint paths, and the checkpointer
  # would then set a good checkpoint aside as damaged.
  out = os.path.abspath(out)
  kw = dict(steps=steps, eval_images=eval_images, rfid_images=rfid_images,
            dataset=dataset, dataset_path=dataset_path)
  cells = sweep.pca_cells(size, grids or s['grids'],
                          fractions or s['fractions'])
  base = [sweep.parse_baseline(b) for b in (
      s['baselines'] if baselines is None else baselines)]
  if budgets is None:
    budgets = sweep.auto_budgets(base, size, **kw)
  os.makedirs(out, exist_ok=True)
  rows = []
  for cell in base + cells:
    config = sweep.cell_config(cell, size, **kw)
    if report_only and not sweep.is_trained(out, cell['name']):
      continue
    record = sweep.train_cell(cell, config, out)
    for setting in sweep.settings_for(cell, config, bit_depths, budgets):
      if report_only and not os.path.exists(_eval_path(out, cell, setting)):
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
  budget_report.report(rows, out, meta)
  return rows


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
  flags.DEFINE_list('bits', [str(b) for b in sweep.DEFAULT_BITS],
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
  out = f.out or os.path.join(harness.WORKDIRS, 'budget_sweep_quick'
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
