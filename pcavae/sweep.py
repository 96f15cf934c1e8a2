"""The budget sweep's cells: their names, training configs and eval settings.

A cell is one training run of experiments/budget_sweep.py, named

  pca_<grid>_q<p>     PCA-VAE on a latent grid (`8x8`: one PCA per location
                      of an 8x8xD latent; `global`: the whole latent as one
                      vector, mapped to N) with Q = p% of D (of N)
  <family>_<grid>_*   a baseline with the same encoder/decoder, e.g.
                      vq_8x8_k1024, fsq_8x8_l8555, lfq_8x8_d10, kl_8x8_c4

and trained in `<out>/runs/<cell>`. The settings a PCA cell is evaluated at
are `float32` (the paper's count), `b<n>` (n bits per coefficient) and
`wf<B>` (B bits per image, water-filled); a baseline has one, `native`.
experiments/traversal.py and experiments/rate_distortion.py train and read
the same cells.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import ml_collections

from pcavae import bits
from pcavae import configlib
from pcavae import harness

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
                   'bsq_16x16_d18', 'bsq_16x16_d36',
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
    'bsq': ('bsq', 'BSQ', 'code_dim'),
    'kl': ('kl', 'KL-VAE', 'latent_channels'),
}
DEFAULT_BITS = (32, 8, 6, 4)
# Written in a cell's workdir when it has trained (its record).
DONE_FILE = 'sweep_done.json'

Cell = Dict[str, Any]


def pca_cells(size: str, grids: Sequence[str], fractions: Sequence[int]
              ) -> List[Cell]:
  """The PCA cells of every grid and Q/D percentage."""
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


def parse_baseline(name: str) -> Cell:
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


def cellby_name(name: str, size: str) -> Cell:
  """Any cell by its name: `pca_<grid>_q<percent>` or a baseline's."""
  if not name.startswith('pca_'):
    return parse_baseline(name)
  grid, _, percent = name[len('pca_'):].partition('_q')
  if grid not in SIZES[size]['channels'] or not percent.isdigit():
    raise ValueError(f'Unknown PCA cell {name!r} (pca_<grid>_q<percent>).')
  return pca_cells(size, [grid], [int(percent)])[0]


def cell_config(cell: Cell, size: str, steps: int = 0,
                eval_images: Optional[int] = None,
                rfid_images: Optional[int] = None, dataset: str = '',
                dataset_path: str = '') -> ml_collections.ConfigDict:
  """The training config of a cell."""
  s = SIZES[size]
  quick = size == 'quick'
  if cell['family'] == 'pcavae':
    setting = 'global' if cell['grid'] == 'global' else 'spatial4'
    arg = f'setting={setting}' + (',runlocal' if quick else '')
  else:
    arg = 'runlocal' if quick else ''
  c = harness.load_config(cell['family'], arg)
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


def run_dir(out: str, name: str) -> str:
  """The workdir of cell `name` in a sweep output folder."""
  return os.path.join(out, 'runs', name)


def is_trained(out: str, name: str) -> bool:
  return os.path.exists(os.path.join(run_dir(out, name), DONE_FILE))


def train_cell(cell: Cell, config: ml_collections.ConfigDict, out: str
               ) -> Dict[str, Any]:
  """Trains a cell unless `runs/<cell>/sweep_done.json` exists; its record
  (`harness.train_once`)."""
  workdir = run_dir(out, cell['name'])
  if not is_trained(out, cell['name']):
    logging.info('Training %s in %s.', cell['name'], workdir)
  return harness.train_once(config, workdir, DONE_FILE)


def settings_for(cell: Cell, config: ml_collections.ConfigDict,
                 bit_depths: Sequence[int], budgets: Sequence[int]
                 ) -> List[Dict[str, Any]]:
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


def auto_budgets(baseline_cells: Sequence[Cell], size: str, **kw
                 ) -> List[int]:
  """The baselines' own bit counts, near-duplicates (< 2% apart) merged."""
  values = sorted({bits.latent_bits(cell_config(c, size, **kw))
                   for c in baseline_cells})
  out = []
  for v in values:
    if not out or v > out[-1] * 1.02:
      out.append(v)
  return out
