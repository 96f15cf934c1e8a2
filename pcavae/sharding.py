"""Meshes, shardings and multi-host start-up.

The mesh has two axes, `data` and `fsdp`. By default `data` spans every device
of every process and `fsdp` has size 1: the global batch is split along `data`
and the train state is replicated. With `config.mesh.fsdp = k > 1`, parameters
and optimizer state are also split k ways along their largest divisible
dimension (FSDP / ZeRO-3 style; XLA all-gathers them for the forward and
reduce-scatters the gradients) and the batch is split over both axes. The
PCA state and codebooks stay replicated: they are small next to the network
and every device needs all of them each step.

Under `jax.jit` with these shardings, batch means inside the model (the PCA
layer's) are global means: XLA inserts the all-reduce, no explicit collective
needed.
"""

import os
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Train-state keys whose leaves are sharded along `fsdp` (others replicate).
FSDP_STATE_KEYS = ('params', 'opt_state')


def _cluster_detected() -> str | None:
  """Names the multi-process environment JAX can auto-detect, if any."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return 'SLURM'
  if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    return 'TPU pod'
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  if os.environ.get('PCAVAE_AUTO_DISTRIBUTED') == '1':
    return 'PCAVAE_AUTO_DISTRIBUTED=1'
  return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime when more than one process is asked for.

  Must run before anything touches a device. Explicit arguments win; they
  default to the environment variables `PCAVAE_COORDINATOR`,
  `PCAVAE_NUM_PROCESSES` and `PCAVAE_PROCESS_ID`. Without them, a SLURM job
  with more than one task, a multi-host TPU slice or an Open MPI launch is
  detected and `jax.distributed.initialize()` works out the rest itself.
  Otherwise this is a single-process run and nothing happens.
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
  elif (cluster := _cluster_detected()) is not None:
    logging.info('Multi-process environment detected (%s).', cluster)
    jax.distributed.initialize()
  else:
    return
  logging.info('jax.distributed: process %d of %d, %d local / %d devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A `(data, fsdp)` mesh; `config.mesh.data = -1` takes every device left."""
  devices = jax.devices()
  fsdp = config.mesh.get('fsdp', 1) or 1
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'config.mesh.fsdp={fsdp} does not divide the '
                     f'{len(devices)} devices.')
  n = config.mesh.get('data', -1)
  n = len(devices) // fsdp if n in (-1, None) else n
  if n < 1 or n * fsdp > len(devices) or len(devices) % (n * fsdp):
    raise ValueError(f'config.mesh.data={n} x config.mesh.fsdp={fsdp} does '
                     f'not divide the {len(devices)} devices.')
  if config.batch_size % (n * fsdp):
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible '
                     f'by the {n * fsdp} devices of the mesh.')
  if config.batch_size % jax.process_count():
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible '
                     f'by the {jax.process_count()} processes.')
  return Mesh(np.asarray(devices[:n * fsdp]).reshape(n, fsdp), BATCH_AXES)


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape, fsdp_size: int) -> P:
  """Shards the largest dimension divisible by the fsdp size; else none."""
  if fsdp_size == 1:
    return P()
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % fsdp_size == 0 and shape[i] >= fsdp_size:
      spec = [None] * len(shape)
      spec[i] = FSDP_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for a train-state dict: params and optimizer state sharded
  along `fsdp` (when it is > 1), everything else replicated."""
  k = mesh.shape[FSDP_AXIS]

  def one(path, leaf):
    top = getattr(path[0], 'key', None)
    if top in FSDP_STATE_KEYS and getattr(leaf, 'ndim', 0) > 0:
      return NamedSharding(mesh, fsdp_spec(leaf.shape, k))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, abstract_state)


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
