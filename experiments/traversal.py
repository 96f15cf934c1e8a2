r"""Latent traversals: what one PCA coefficient does, and a VQ analogue.

For a trained PCA-VAE (default: the `pca_global_q100` cell of the budget
sweep, one PCA over the whole latent, so a coefficient is one number per
image) decodes held-out images with coefficient j moved over
`t * sigma_j`, t in [-2, 2], sigma_j from the running coefficient variance
(`pcavae.traversal.pca_traversal`): a strip per component, the paper's
interpretability figure. For a VQ baseline (default `vq_8x8_k1024`) the
nearest analogue: the encoder output moved along its j-th principal
direction (over 256 held-out images) by `t * sqrt(lambda_j)`, then quantized
and decoded (`pcavae.traversal.latent_traversal`).

  python experiments/traversal.py --quick     # uses workdirs/budget_sweep_quick
  python experiments/traversal.py --sweep_dir=workdirs/budget_sweep \
    --pca_cell=pca_global_q100 --vq_cell=vq_16x16_k1024

A missing cell is trained first with the budget sweep's definition
(`pcavae.sweep`, as experiments/budget_sweep.py trains it), so this runs on
its own too. Outputs in
`--out` (default `<sweep_dir>/traversal`): `traversal_pca.png`,
`traversal_vq.png` and `traversal.json` (per component: sigma and the mean
absolute pixel change from t = 0, and run times). Existing outputs are kept
unless `--overwrite`.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from pcavae import data
from pcavae import harness
from pcavae import sweep
from pcavae import train
from pcavae import traversal
from pcavae import viz


def ensure_trained(name: str, sweep_dir: str, size: str, steps: int = 0
                   ) -> str:
  """The workdir of a sweep cell, trained first if it is not there."""
  if not sweep.is_trained(sweep_dir, name):
    cell = sweep.cell_by_name(name, size)
    config = sweep.cell_config(cell, size, steps=steps)
    sweep.train_cell(cell, config, sweep_dir)
  return sweep.run_dir(sweep_dir, name)


def eval_images(config, num: int, reference: int):
  """`num` held-out images spread over the split, and the first
  `reference` ones (for the VQ directions), in [-1, 1]."""
  splits = data.get_splits(config.dataset, config.resolution)
  idx = np.linspace(0, len(splits.eval) - 1, num).round().astype(int)
  shown = data.to_float(np.stack([splits.eval[i] for i in idx]))
  ref = data.to_float(np.stack([splits.eval[i] for i in range(
      min(reference, len(splits.eval)))]))
  return shown, ref


def run(out: str, sweep_dir: str, size: str = 'quick',
        pca_cell: str = 'pca_global_q100', vq_cell: str = 'vq_8x8_k1024',
        components=(0, 1, 2, 3, -1), values=(-2, -1, 0, 1, 2),
        num_images: int = 3, steps: int = 0, overwrite: bool = False
        ) -> dict:
  """Writes the traversal figures and `traversal.json`; returns its dict."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # Absolute: orbax rejects relative checkpoint paths (see budget_sweep.run).
  out, sweep_dir = os.path.abspath(out), os.path.abspath(sweep_dir)
  path = os.path.join(out, 'traversal.json')
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      return json.load(f)
  os.makedirs(out, exist_ok=True)
  result = {'values': list(values), 'components': list(components)}
  for which, name in (('pca', pca_cell), ('vq', vq_cell)):
    if not name:
      continue
    t0 = time.perf_counter()
    workdir = ensure_trained(name, sweep_dir, size, steps)
    t_train = time.perf_counter() - t0
    config, model, variables, step = train.restore_model(workdir)
    shown, ref = eval_images(config, num_images, 256)
    t0 = time.perf_counter()
    # Negative indices count from the last component (-1: the smallest).
    n = (config.model.bottleneck.num_components if which == 'pca'
         else config.model.latent_dim)
    shown_components = [j % n for j in components]
    if which == 'pca':
      strips, info = traversal.pca_traversal(model, variables, shown,
                                             shown_components, values)
      labels = [f'PC {j + 1}\nsigma {s:.2g}'
                for j, s in zip(shown_components, info['sigma'])]
      what = (f'{name}: coefficient j moved by t sigma_j '
              f"({config.model.bottleneck.mode} PCA, Q = "
              f'{config.model.bottleneck.num_components})')
    else:
      strips, info = traversal.latent_traversal(model, variables, shown, ref,
                                                shown_components, values)
      labels = [f'z_e dir {j + 1}\nsigma {s:.2g}'
                for j, s in zip(shown_components, info['sigma'])]
      what = (f'{name}: encoder output moved by t sigma_j along its j-th '
              'principal direction, then quantized')
    seconds = time.perf_counter() - t0
    image = viz.traversal_figure(strips, values, labels,
                                 title=what + ', t in sigma units')
    Image.fromarray(image).save(os.path.join(out, f'traversal_{which}.png'))
    result[which] = {'cell': name, 'step': step,
                     'components': shown_components, **info,
                     'seconds': seconds, 'train_seconds': t_train}
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return result


def _define_flags():
  flags.DEFINE_bool('quick', False, 'Use/train the quick budget-sweep cells.')
  flags.DEFINE_string('sweep_dir', None, 'Budget sweep output (default '
                      'workdirs/budget_sweep_quick or workdirs/budget_sweep).')
  flags.DEFINE_string('out', None, 'Output directory (default '
                      '<sweep_dir>/traversal).')
  flags.DEFINE_string('pca_cell', 'pca_global_q100', 'PCA-VAE cell.')
  flags.DEFINE_string('vq_cell', 'vq_8x8_k1024', 'Baseline cell ("" skips).')
  flags.DEFINE_list('components', ['0', '1', '2', '3', '-1'],
                    'Components (0 = largest variance, -1 = the last).')
  flags.DEFINE_list('values', ['-2', '-1', '0', '1', '2'],
                    'Offsets in units of sigma.')
  flags.DEFINE_integer('num_images', 3, 'Held-out images per strip.')
  flags.DEFINE_integer('steps', 0, 'Train steps if a cell must be trained.')
  flags.DEFINE_bool('overwrite', False, 'Redo existing outputs.')


def main(argv):
  del argv
  f = flags.FLAGS
  size = 'quick' if f.quick else 'full'
  sweep_dir = f.sweep_dir or os.path.join(
      harness.WORKDIRS, 'budget_sweep_quick' if f.quick else 'budget_sweep')
  out = f.out or os.path.join(sweep_dir, 'traversal')
  t0 = time.perf_counter()
  result = run(out, sweep_dir, size, f.pca_cell, f.vq_cell,
               [int(c) for c in f.components], [float(v) for v in f.values],
               f.num_images, f.steps, f.overwrite)
  for which in ('pca', 'vq'):
    if which in result:
      r = result[which]
      change = r['mean_abs_pixel_change'] or []
      print(f"{which} ({r['cell']}): sigma "
            f"{[round(s, 3) for s in r['sigma']]}, mean |pixel change| "
            f"{[round(c, 4) for c in change]}, {r['seconds']:.1f} s")
  print(f'wall {time.perf_counter() - t0:.1f} s. Outputs in {out}: '
        'traversal_pca.png, traversal_vq.png, traversal.json')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
