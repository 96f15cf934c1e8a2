r"""Command line: flags only; everything else is importable from a notebook.

  python -m pcavae.main --config=configs/pcavae.py:runlocal --workdir=/tmp/pca

Any config key can be overridden, e.g. `--config.batch_size=64`.
Multi-host: pass `--coordinator_address`, `--num_processes`, `--process_id`
(or the `PCAVAE_*` environment variables; see docs/usage.md, "On a GPU,
several GPUs, a cluster, a TPU pod").
"""

import json
import os

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from pcavae import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/<family>.py[:args]).',
    lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-host runs).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process (multi-host).')
_CONFIG_MISMATCH = flags.DEFINE_enum(
    'config_mismatch', 'error', ['error', 'allow'],
    'What to do when --workdir holds a run of a different config.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before anything touches a device.
  from pcavae import sharding  # pylint: disable=g-import-not-at-top
  sharding.tune_host_allocator()
  sharding.default_xla_flags()
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  cache = cli.enable_compilation_cache()
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  # A bad config fails before the workdir exists; a workdir that cannot be
  # made is one line naming it, not a traceback from deep inside training.
  try:
    configlib.validate(_CONFIG.value)
  except ValueError as e:
    raise SystemExit(f'Invalid config: {e}') from None
  workdir = cli.make_workdir(_WORKDIR.value)
  if cache:
    logging.info('Compilation cache: %s', cache)
  final = train.train_and_evaluate(_CONFIG.value, workdir,
                                   config_mismatch=_CONFIG_MISMATCH.value)
  if sharding.is_primary():
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in final.items()}), flush=True)
    print(f'Outputs in {workdir}: metrics.jsonl, images/, checkpoints/, '
          'config.json', flush=True)
  if cache:
    logging.info('Compilation cache %s: %d programs loaded, %d compiled.',
                 cache, cli.CACHE_COUNTS['loaded'],
                 cli.CACHE_COUNTS['compiled'])


def run():
  """Console script `pcavae-train`."""
  cli.setup_logging()
  app.run(main)


if __name__ == '__main__':
  run()
