"""Meshes, shardings and multi-host start-up.

One mesh axis, `data`, spans every device of every process by default; the
global batch is split along it and the train state is replicated. Under
`jax.jit` with these shardings, batch means inside the model (the PCA layer's)
are global means: XLA inserts the all-reduce, no explicit collective needed.
"""

import os
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime when more than one process is asked for.

  Must run before anything touches a device. Arguments default to the
  environment variables `PCAVAE_COORDINATOR`, `PCAVAE_NUM_PROCESSES` and
  `PCAVAE_PROCESS_ID`; when none is set and JAX can detect a cluster (TPU pod,
  SLURM, ...), `jax.distributed.initialize()` auto-detects; otherwise this is
  a single-process run and nothing happens.
  """
  coordinator_address = coordinator_address or os.environ.get(
      'PCAVAE_COORDINATOR')
  if num_processes is None and 'PCAVAE_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['PCAVAE_NUM_PROCESSES'])
  if process_id is None and 'PCAVAE_PROCESS_ID' in os.environ:
    process_id = int(os.environ['PCAVAE_PROCESS_ID'])
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif os.environ.get('PCAVAE_AUTO_DISTRIBUTED') == '1':
    jax.distributed.initialize()
  else:
    return
  logging.info('jax.distributed: process %d of %d, %d local / %d devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A 1-D `data` mesh over `config.mesh.data` devices (-1: all)."""
  devices = jax.devices()
  n = config.mesh.get('data', -1)
  n = len(devices) if n in (-1, None) else n
  if n > len(devices) or len(devices) % n:
    raise ValueError(f'config.mesh.data={n} does not divide the '
                     f'{len(devices)} devices.')
  if config.batch_size % n:
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible '
                     f'by the {n} devices of the data axis.')
  if config.batch_size % jax.process_count():
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible '
                     f'by the {jax.process_count()} processes.')
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Assembles each process's slice of the batch into one global array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def is_primary() -> bool:
  """Only process 0 writes logs, images and config files."""
  return jax.process_index() == 0
