"""The budget sweep's report: tables, CSV, budget curve and radar chart.

Written by experiments/budget_sweep.py from its result rows (one per cell
and eval setting, see that script); read back by the colab/ notebooks
(`load_results`, `radar_rows`).
"""

import csv
import json
import os
from typing import Any, Dict, List, Optional

from pcavae import harness
from pcavae import viz

Row = Dict[str, Any]

CSV_KEYS = ('cell', 'group', 'grid', 'q', 'q_frac', 'setting', 'kind',
            'bits_per_image', 'entropy_bits_per_image', 'psnr', 'ssim',
            'lpips', 'rfid', 'rfid_images', 'codebook_usage', 'steps',
            'train_minutes', 'eval_seconds', 'num_images', 'label')


def radar_rows(rows: List[Row], budget: Optional[float] = None
               ) -> List[Row]:
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


def _quality(r: Row) -> List[str]:
  """Bits, PSNR, SSIM and LPIPS cells of a row."""
  return [f"{r['bits_per_image']:.0f}", f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
          harness.fmt(r['lpips'], '.3f')]


def equal_bits_table(rows: List[Row]) -> List[str]:
  """For each baseline: the best quantized PCA at no more nominal bits."""
  pca = [r for r in rows if r['kind'] in ('pca_fixed', 'pca_waterfill')]
  table = []
  for b in sorted((r for r in rows if r['kind'] == 'baseline'),
                  key=lambda r: r['bits_per_image']):
    cands = [r for r in pca if r['bits_per_image'] <= b['bits_per_image']]
    p = max(cands, key=lambda r: r['psnr']) if cands else None
    right = (['-'] * 5 if p is None else
             [f"PCA {p['grid']} Q={p['q']} {p['setting']}"] + _quality(p))
    table.append([b['label']] + _quality(b) + right)
  return harness.markdown_table(
      ['baseline', 'bits', 'PSNR', 'SSIM', 'LPIPS', 'best PCA at <= bits',
       'bits', 'PSNR', 'SSIM', 'LPIPS'], table, align='lrrrrlrrrr')


def results_table(rows: List[Row]) -> List[str]:
  """Every evaluation: bits, entropy-coded bits and quality (rFID when any
  row measured it)."""
  has_rfid = any(r.get('rfid') is not None for r in rows)
  table = []
  for r in rows:
    name = (r['label'] if r['kind'] == 'baseline'
            else f"PCA {r['grid']} Q={r['q']} ({r['q_frac']}%)")
    table.append(
        [name, r['setting'], f"{r['bits_per_image']:.0f}",
         harness.fmt(r.get('entropy_bits_per_image'), '.0f'),
         f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
         harness.fmt(r.get('lpips'), '.3f')]
        + ([harness.fmt(r.get('rfid'), '.1f')] if has_rfid else []))
  return harness.markdown_table(
      ['model', 'setting', 'bits / image', 'entropy-coded bits', 'PSNR',
       'SSIM', 'LPIPS'] + (['rFID'] if has_rfid else []), table,
      align='ll' + 'r' * (5 + has_rfid))


def report(rows: List[Row], out: str, meta: Dict[str, Any]) -> str:
  """Writes results.{json,csv,md}, budget_curve.png and radar.png."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = sorted(rows, key=lambda r: (r['group'], r.get('q') or 0,
                                     r['bits_per_image']))
  harness.write_json(os.path.join(out, 'results.json'),
                     {'meta': meta, 'rows': rows})
  with open(os.path.join(out, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, CSV_KEYS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  has_rfid = any(r.get('rfid') is not None for r in rows)
  lines = [f"Budget sweep ({meta['size']}): {len(rows)} evaluations; "
           f"training {meta['train_minutes_total']:.1f} min, quantized "
           f"evals {meta['eval_seconds_total'] / 60:.1f} min.", '']
  lines += results_table(rows)
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


def load_results(out: str) -> Dict[str, Any]:
  """`{'meta': ..., 'rows': [...]}` of a finished sweep (for notebooks)."""
  with open(os.path.join(out, 'results.json')) as f:
    return json.load(f)
