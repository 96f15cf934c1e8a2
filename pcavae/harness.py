"""The small harness the scripts in experiments/ share.

Load a config file of `configs/` with overrides (by path, through
`configlib.load`), train a run once, evaluate a trained workdir with some
bottleneck keys changed, and write markdown tables. The scripts keep what
is their own (what they vary, what they report); everything they would
otherwise repeat of the package is here.
"""

import copy
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from pcavae import configlib
from pcavae import data
from pcavae import evaluators
from pcavae import sharding
from pcavae import train
from pcavae import train_state

# The checkout the package runs from (it is installed editable): `configs/`
# sits beside `pcavae/`, and the experiments write under `workdirs/`.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'configs')
WORKDIRS = os.path.join(REPO_ROOT, 'workdirs')


def config_spec(family: str, arg: str = '') -> str:
  """`<repo>/configs/<family>.py[:arg]`, the spec `configlib.load` takes."""
  return os.path.join(CONFIG_DIR, family + '.py') + (f':{arg}' if arg else '')


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets a dotted key (`model.bottleneck.codebook_size`) in place."""
  *path, last = key.split('.')
  node = config
  for name in path:
    node = node[name]
  node[last] = value


def load_config(family: str, arg: str = '',
                overrides: Optional[Mapping[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """`configs/<family>.py` with its `get_config(arg)`, then `overrides`
  (dotted keys, applied in order) as `--config.<key>=<value>` would."""
  config = configlib.load(config_spec(family, arg))
  for key, value in (overrides or {}).items():
    set_key(config, key, value)
  return config


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON through a temporary file: a killed run never
  leaves half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(tmp, path)


def train_once(config: ml_collections.ConfigDict, workdir: str,
               done_file: Optional[str] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming what is there).

  Args:
    config: a training config.
    workdir: the run's workdir (absolute: orbax rejects relative paths).
    done_file: a file name in `workdir`: when it exists the run is not
      trained again and its record is read back; a finished run writes it.

  Returns:
    `{'final': train_and_evaluate's final metrics, 'train_minutes',
    'steps'}`.
  """
  done = os.path.join(workdir, done_file) if done_file else None
  if done and os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  t0 = time.perf_counter()
  final = train.train_and_evaluate(config, workdir)
  record = {'final': final, 'train_minutes': (time.perf_counter() - t0) / 60,
            'steps': int(final['step'])}
  if done:
    write_json(done, record)
  return record


def evaluate(workdir: str, bottleneck: Optional[Mapping[str, Any]] = None,
             stats_dir: Optional[str] = None
             ) -> Tuple[Dict[str, float], np.ndarray]:
  """Evaluates the newest checkpoint of a run on its held-out split.

  Args:
    workdir: a training run's workdir.
    bottleneck: `config.model.bottleneck` keys to change for this eval only
      (e.g. `coefficient_bits`: PCA coefficients are quantized at eval).
    stats_dir: where the evaluator keeps its cached files (rFID reference
      statistics); default `workdir`.

  Returns:
    `(metrics, grid)`: the `eval/...` metrics and the image grid (held-out
    originals over reconstructions, uint8).
  """
  config, _, variables, step = train.restore_model(workdir)
  config = copy.deepcopy(config)
  for key, value in (bottleneck or {}).items():
    config.model.bottleneck[key] = value
  # Training's evals saved the spectra; a bottleneck override changes only
  # the codes.
  config.eval.units = tuple(u for u in configlib.eval_units(config)
                            if u != 'spectra')
  configlib.validate(config)
  model = train.create_model(config)
  evaluator = evaluators.Evaluator(model, config, sharding.make_mesh(config),
                                   stats_dir or workdir)
  splits = data.get_splits(config.dataset, config.resolution)
  metrics, images = evaluator(train_state.with_variables({}, variables),
                              splits.eval, step)
  return metrics, images['reconstructions']


def fmt(value: Any, spec: str) -> str:
  """`format(value, spec)`, or `-` for a missing value."""
  return '-' if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Optional[str] = None) -> List[str]:
  """The lines of a markdown table of formatted cells.

  Args:
    header: the column titles.
    rows: one sequence of cell strings per row.
    align: one `l` (left) or `r` (right) per column; default: the first
      column left, the others right.

  Returns:
    The header, the alignment line and one line per row.
  """
  align = align or 'l' + 'r' * (len(header) - 1)
  if len(align) != len(header):
    raise ValueError(f'align {align!r} does not match {len(header)} columns.')
  line = lambda cells: '| ' + ' | '.join(cells) + ' |'
  return ([line(header),
           '|' + ''.join('---|' if a == 'l' else '---:|' for a in align)]
          + [line(r) for r in rows])
