"""grain pipelines: the infinite shuffled train stream and fixed-order eval.

Both pipelines cut one conceptual *global* stream into per-process rows so that
what a process sees never depends on how many processes there are:

* train: the stream is `shuffle(epoch e) ++ shuffle(epoch e + 1) ++ ...` over
  the whole source (a different permutation per epoch, batches may straddle an
  epoch boundary so every example is seen exactly once per epoch). Global batch
  `s` is stream elements `[s * B, (s + 1) * B)`; process `p` of `P` takes rows
  `[p * b, (p + 1) * b)` of it, `b = B // P`. In grain terms the stream is
  batched by `b` and process `p` keeps the chunks `s * P + p`.
* eval: the first `n` examples in order, padded with zeros (mask False) up to a
  multiple of `B`, cut the same way.

Everything is random access (`grain.MapDataset`), so starting at step `s` is a
slice, not a replay: no iterator state needs checkpointing.
"""

from __future__ import annotations

import math
from typing import Iterator

from absl import flags
import grain
import numpy as np

from pcavae.data.sources import Source


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 `[0, 255]` -> float32 `[-1, 1]` (0 -> -1 exactly, 255 -> 1)."""
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def shuffle_seed(seed: int) -> int:
  """Maps any integer seed to grain's 32-bit shuffle seed.

  grain reseeds epoch `e` with `seed + e`; hashing the user seed keeps runs with
  neighbouring seeds (0, 1, ...) from replaying each other's epochs.

  Args:
    seed: any Python integer.

  Returns:
    An integer in `[0, 2**32)`.
  """
  state = np.random.SeedSequence(int(seed) % 2**64).generate_state(
      1, dtype=np.uint32)
  return int(state[0])


def per_process_batch_size(global_batch_size: int, process_index: int,
                           process_count: int) -> int:
  """Validates the sharding arguments and returns `B // P`."""
  if int(global_batch_size) != global_batch_size or global_batch_size <= 0:
    raise ValueError(f'global_batch_size must be a positive integer, got '
                     f'{global_batch_size!r}.')
  if process_count <= 0:
    raise ValueError(f'process_count must be positive, got {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got '
                     f'{process_index}.')
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible '
                     f'by process_count={process_count}.')
  return global_batch_size // process_count


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(num_threads),
                           prefetch_buffer_size=int(prefetch))


def train_dataset(source: Source, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """The random-access train pipeline behind `train_iterator`.

  Element `k` of the returned dataset is this process's float32 slice of
  global batch `start_step + k`.

  Args:
    source: random-access uint8 images.
    global_batch_size: B, summed over processes.
    seed: shuffle seed; the global stream is a function of it alone.
    start_step: first global step to return.
    process_index: this process, p.
    process_count: number of processes, P.

  Returns:
    An (effectively infinite) `grain.MapDataset` of float32 `(b, R, R, 3)`.
  """
  b = per_process_batch_size(global_batch_size, process_index, process_count)
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError('Cannot build a train pipeline over an empty source.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  ds = grain.MapDataset.source(source)
  ds = ds.shuffle(seed=shuffle_seed(seed)).repeat()
  # Chunk c of b stream elements; global batch s is chunks s*P .. s*P + P-1.
  ds = ds.batch(b, drop_remainder=True)
  ds = ds[process_index::process_count]
  ds = ds[int(start_step):]
  return ds.map(to_float)


def check_workers(workers) -> None:
  """Raises ValueError naming `config.data_workers` unless `workers` is an
  integer >= 0 (configlib.validate calls it before a run starts)."""
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise ValueError(f'config.data_workers={workers!r} must be an integer '
                     '>= 0 (grain worker processes; 0: none).')


def train_iterator(source: Source, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, num_threads: int = 2,
                   prefetch: int = 2, workers: int = 0
                   ) -> Iterator[np.ndarray]:
  """Yields float32 `(B // P, R, R, 3)` batches in `[-1, 1]`, forever.

  The global batch at step `s` is a function of `(seed, s)` only, whatever the
  process count; process `p` gets rows `[p * b, (p + 1) * b)` of it. A fresh
  iterator with `start_step=s` yields exactly what an iterator from step 0
  yields from its `s`-th batch on, at O(1) cost. Every epoch is a new
  permutation of the whole source.

  Args:
    source: random-access uint8 `(R, R, 3)` images.
    global_batch_size: B, summed over processes; divisible by `process_count`.
    seed: shuffle seed.
    start_step: global step of the first batch yielded.
    process_index: this process, p.
    process_count: number of processes, P.
    num_threads: grain reader threads (0 reads in the consuming thread).
    prefetch: grain prefetch buffer size, in batches.
    workers: grain worker processes that read, decode and batch
      (`mp_prefetch`; `config.data_workers`), each with `num_threads`
      threads; 0 reads in this process. The stream is the same for every
      count (tests/test_input_pipeline.py): on a host with cores to spare
      this is how decoding keeps up with a GPU (docs/speed.md "Input pipeline").

  Returns:
    An iterator of float32 arrays.
  """
  check_workers(workers)
  ds = train_dataset(source, global_batch_size=global_batch_size, seed=seed,
                     start_step=start_step, process_index=process_index,
                     process_count=process_count)
  it = ds.to_iter_dataset(_read_options(num_threads, prefetch))
  if workers:
    # grain's worker processes read absl flags: outside an absl app (a
    # notebook, a test) they take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it)


def eval_dataset(source: Source, *, global_batch_size: int,
                 num_examples: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """The random-access pipeline behind `eval_batches` (see there)."""
  b = per_process_batch_size(global_batch_size, process_index, process_count)
  n = len(source) if num_examples is None else min(int(num_examples),
                                                   len(source))
  if n < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}.')
  num_steps = math.ceil(n / global_batch_size)
  if num_steps == 0:
    return grain.MapDataset.source([])
  shape = np.shape(source[0])

  def load(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = indices < n
    images = np.zeros((b,) + shape, np.float32)
    for row in np.flatnonzero(mask):
      images[row] = to_float(np.asarray(source[int(indices[row])]))
    return images, mask

  ds = grain.MapDataset.range(num_steps * global_batch_size).batch(b)
  ds = ds[process_index::process_count]
  return ds.map(load)


def eval_batches(source: Source, *, global_batch_size: int,
                 num_examples: int | None = None, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 2,
                 prefetch: int = 2
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Fixed-order batches over the first `num_examples` of a split.

  Yields `(images, mask)`: images float32 `(b, R, R, 3)` in `[-1, 1]`
  (`b = global_batch_size // process_count`), mask bool `(b,)`. The last global
  batch is zero-padded with mask False; every process yields the same number of
  batches. Process `p` gets rows `[p * b, (p + 1) * b)` of each global batch.

  Args:
    source: random-access uint8 `(R, R, 3)` images.
    global_batch_size: B, summed over processes; divisible by `process_count`.
    num_examples: how many leading examples to cover (default: all; clipped
      to the split size).
    process_index: this process, p.
    process_count: number of processes, P.
    num_threads: grain reader threads.
    prefetch: grain prefetch buffer size, in batches.

  Returns:
    An iterator of `(images, mask)` tuples.
  """
  ds = eval_dataset(source, global_batch_size=global_batch_size,
                    num_examples=num_examples, process_index=process_index,
                    process_count=process_count)
  return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))
