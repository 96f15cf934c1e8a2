"""Meshes, shardings and multi-host start-up.

The mesh has two axes, `data` and `fsdp`. By default `data` spans every device
of every process and `fsdp` has size 1: the global batch is split along `data`
and the train state is replicated. With `config.mesh.fsdp = k > 1`, parameters
and optimizer state are also split k ways along their largest divisible
dimension (FSDP / ZeRO-3 style; XLA all-gathers them for the forward and
reduce-scatters the gradients) and the batch is split over both axes.
Codebooks stay replicated: every device needs all of them each step. The
state of a `spatial` PCA bottleneck (one PCA per latent location) is split by
location over every device instead (`config.mesh.pca_locations`, on by
default): each device then runs the Sanger update and the projections of its
own L / devices locations, where a replicated basis has every device repeat
all of them (see `location_sharding`).

Under `jax.jit` with these shardings, batch means inside the model (the PCA
layer's) are global means: XLA inserts the all-reduce, no explicit collective
needed.
"""

import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from pcavae import configlib
from pcavae import train_state

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Train-state keys whose leaves are sharded along `fsdp` (others replicate).
FSDP_STATE_KEYS = ('params', 'opt_state')


# XLA:CPU flags that pcavae sets unless the user's XLA_FLAGS mentions them:
# (flag name, value, jaxlib versions [lo, hi) it was measured on).
_CPU_XLA_FLAGS = (
    # Convolutions through Eigen, dots through YNNPACK. jaxlib 0.10's default
    # also sends convolutions to YNNPACK, whose weight-gradient convolutions
    # are 2-2.5x slower here (2x2 kernels with 512 channels, 1x1 kernels):
    # the spatial16 train step takes ~10% more CPU time on the 2-core box.
    ('xla_cpu_experimental_ynn_fusion_type', 'individual_dot',
     (0, 10), (0, 11)),
)


def default_xla_flags(environ=None) -> str:
  """Adds pcavae's XLA:CPU defaults to `XLA_FLAGS`; returns the new value.

  Must run before JAX creates its CPU backend (flags are read once);
  `pcavae.main` and `experiments/throughput.py` call it first thing. A flag
  the user already set in `XLA_FLAGS` is left as it is, and nothing is added
  for a jaxlib outside the versions a flag was measured on (XLA aborts on
  flags it does not know). `PCAVAE_XLA_DEFAULTS=0` turns it off.

  Args:
    environ: the environment to read and update (default `os.environ`).
  """
  env = os.environ if environ is None else environ
  flags = env.get('XLA_FLAGS', '')
  if env.get('PCAVAE_XLA_DEFAULTS', '1') == '0':
    return flags
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    version = tuple(int(v) for v in jaxlib.__version__.split('.')[:2])
  except (ImportError, ValueError):
    return flags
  added = [f'--{name}={value}' for name, value, lo, hi in _CPU_XLA_FLAGS
           if lo <= version < hi and f'--{name}' not in flags]
  if added:
    if _backend_started():
      logging.warning('XLA flags %s not applied: JAX already started.', added)
      return flags
    flags = ' '.join([flags] + added).strip()
    env['XLA_FLAGS'] = flags
  return flags


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def tune_host_allocator() -> bool:
  """Keeps freed host memory in the process so XLA:CPU reuses it.

  XLA:CPU allocates each step's outputs and temporaries afresh. glibc serves
  large blocks with `mmap` and returns them with `munmap`, so every step
  page-faults (and the kernel zeroes) hundreds of MB again: on the 2-core
  benchmark machine about 100k faults and 0.2 s of system time per train
  step of the `spatial16` model, 6-7% of its CPU time. One arena and no
  `mmap` make freed blocks reusable. Trimming is off as well: with a 1 GiB
  trim threshold the heap (2.4 GB at the PCA step's peak) was still
  returned to the kernel every few steps, each time followed by ~200k
  faults and a step 1.5 s slower. The cost is that the process keeps its
  peak heap until it exits.

  Only for a run on the CPU: with an accelerator the host does little
  allocating, and a single arena serialises the runtime's many host threads
  on one lock. So it is skipped when an accelerator plugin of JAX (CUDA,
  ROCm, TPU) is installed and `JAX_PLATFORMS` does not pin the run to `cpu`.

  Call it first thing, before JAX allocates (`pcavae.main` does). It does
  nothing when `PCAVAE_MALLOC_TUNING=0` (and applies even beside an
  accelerator with `PCAVAE_MALLOC_TUNING=1`), when the user set any glibc
  malloc variable (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`,
  `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`), or outside Linux/glibc.

  Returns:
    Whether the settings were applied.
  """
  choice = os.environ.get('PCAVAE_MALLOC_TUNING', '')
  if choice == '0':
    return False
  if choice != '1' and accelerator_expected():
    return False
  if any(k in os.environ for k in ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_',
                                   'MALLOC_TRIM_THRESHOLD_',
                                   'GLIBC_TUNABLES')):
    return False
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL('libc.so.6')
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # <malloc.h>
    ok = (libc.mallopt(m_arena_max, 1) == 1
          and libc.mallopt(m_mmap_max, 0) == 1
          and libc.mallopt(m_trim_threshold, -1) == 1)  # never trim
  except (OSError, AttributeError):
    return False
  return bool(ok)


def accelerator_expected() -> bool:
  """Whether JAX will start an accelerator backend, judged before it starts:
  an accelerator plugin (CUDA, ROCm, TPU) is installed and `JAX_PLATFORMS`
  does not pin the run to the CPU."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms and set(platforms.split(',')) <= {'cpu'}:
    return False
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  prefixes = ('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm', 'libtpu')
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower()
    if name.startswith(prefixes):
      return True
  return False


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


def location_sharding(config: ml_collections.ConfigDict, mesh: Mesh,
                      bottleneck=None) -> NamedSharding | None:
  """Where a location-sharded bottleneck's per-location arrays go, or None.

  A bottleneck whose state and samples have the latent location first
  (`Bottleneck.location_sharded`: the `spatial` PCA, with its basis
  `(L, D, Q)`, means, variances and samples `(L, B, D)`) can split by it.
  Split along it over both mesh axes, each of the N devices updates and
  projects L / N locations; XLA moves the samples from batch- to location-split and the reconstruction
  back (two all-to-alls of the `(L, B, D)` latent, small next to the basis).
  Measured on 2 forced CPU devices (spatial16, docs/speed.md): 1490-1641 ms
  per step split vs 1833-1883 ms replicated.

  None (replicated) when `config.mesh.pca_locations` is False, the bottleneck
  is not location-sharded, the mesh has one device, or the number of
  locations is not divisible by the number of devices. `bottleneck`: the
  config's (`configlib.make_bottleneck`), built if not given.
  """
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  if (not config.mesh.get('pca_locations', True) or mesh.size == 1
      or not bottleneck.location_sharded()):
    return None
  h, w, _ = configlib.latent_shape(config)
  if (h * w) % mesh.size:
    logging.info('The %d latent locations do not split over %d devices; the '
                 'bottleneck state stays replicated.', h * w, mesh.size)
    return None
  return NamedSharding(mesh, P(BATCH_AXES))


def state_shardings(abstract_state: Any, mesh: Mesh,
                    config: ml_collections.ConfigDict, bottleneck=None
                    ) -> Any:
  """Shardings for a train-state dict: params and optimizer state sharded
  along `fsdp` (when it is > 1), the state collection of a location-sharded
  bottleneck split by location (`location_sharding`, as the model built by
  `train.create_model(config, mesh)` expects), everything else replicated."""
  k = mesh.shape[FSDP_AXIS]
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  locations = location_sharding(config, mesh, bottleneck)
  own = bottleneck.state_collection

  def one(path, leaf):
    top = getattr(path[0], 'key', None)
    collection = (getattr(path[1], 'key', None)
                  if top == train_state.COLLECTIONS else None)
    ndim = getattr(leaf, 'ndim', 0)
    if top in FSDP_STATE_KEYS and ndim > 0:
      return NamedSharding(mesh, fsdp_spec(leaf.shape, k))
    if collection == own and ndim > 0 and locations is not None:
      return locations  # every non-scalar leaf of its state is per location
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


def gather(x: jax.Array) -> np.ndarray:
  """A global array on the host of every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
