"""What every command-line entry point shares, without defining any flag.

`pcavae.main`, `pcavae.reconstruct`, `pcavae.sample` (and any later entry
point) each define their own absl flags; a module both import must define none, or absl refuses
the second definition (`DuplicateFlagError`).
"""

import logging as py_logging
import math
import os
import sys
import time
from typing import Optional

from absl import logging


class _QuietLibraries:
  """Drops INFO records of orbax and friends: one line per checkpoint is
  enough (ours); warnings and errors still pass."""

  _NOISY = (os.sep + 'orbax' + os.sep, os.sep + 'etils' + os.sep)

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(
        n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
  """Installs `_QuietLibraries` on absl's logger and the root handlers."""
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())


def setup_logging() -> None:
  """INFO logs on stderr, minus the libraries' per-checkpoint chatter."""
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()


def enable_compilation_cache() -> Optional[str]:
  """Turns on JAX's persistent compilation cache; returns its directory.

  A restarted or resumed run then loads its programs instead of compiling
  them (and on GPUs XLA's autotuning results with them). The directory is
  `$JAX_COMPILATION_CACHE_DIR` when set, else `$PCAVAE_CACHE/jax` (default
  `~/.cache/pcavae/jax`); `PCAVAE_COMPILATION_CACHE=0` turns it off. Every
  program is cached, however quickly it compiled: a run's small programs add
  up. Call it before the first compilation.
  """
  if os.environ.get('PCAVAE_COMPILATION_CACHE', '1') == '0':
    return None
  import jax  # pylint: disable=g-import-not-at-top
  from pcavae.metrics import inception  # pylint: disable=g-import-not-at-top
  path = (os.environ.get('JAX_COMPILATION_CACHE_DIR')
          or str(inception.cache_dir() / 'jax'))
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.monitoring.register_event_listener(_count_cache_event)
  return path


# Programs loaded from / compiled past the persistent cache in this process.
CACHE_COUNTS = {'loaded': 0, 'compiled': 0}
_CACHE_EVENTS = {'/jax/compilation_cache/cache_hits': 'loaded',
                 '/jax/compilation_cache/cache_misses': 'compiled'}


def _count_cache_event(event: str, **kwargs) -> None:
  del kwargs
  if event in _CACHE_EVENTS:
    CACHE_COUNTS[_CACHE_EVENTS[event]] += 1


def make_workdir(workdir: str, flag: str = '--workdir') -> str:
  """Creates `workdir` (and its parents); returns its absolute path.

  Raises:
    SystemExit: with a one-line message naming `flag` and the path when it
      cannot be created or written (no traceback for a mistyped path).
  """
  path = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise SystemExit(f'Cannot create {flag}={path}: '
                     f'{e.strerror or e}.') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise SystemExit(f'Cannot write to {flag}={path}: permission denied.')
  return path


def format_eta(seconds: float) -> str:
  """`h:mm:ss` of a duration (negative counts as 0)."""
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


class Progress:
  """`<label>: done/total <unit>  x <unit>/s  ETA h:mm:ss` on stderr:
  redrawn in place on a terminal, else a line every `every_s` seconds (and
  at the end)."""

  def __init__(self, total: int, label: str, unit: str = 'images',
               stream=None, every_s: float = 10.0):
    self.total = total
    self.label = label
    self.unit = unit
    self.stream = stream if stream is not None else sys.stderr
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.every_s = every_s
    self.start = time.perf_counter()
    self.last = -math.inf
    self.finished = False

  def line(self, done: int) -> str:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    rate = done / elapsed
    eta = ((self.total - done) / rate) if rate > 0 else 0.0
    return (f'{self.label}: {done}/{self.total} {self.unit}  {rate:.2f} '
            f'{self.unit}/s  ETA {format_eta(eta)}')

  def update(self, done: int) -> None:
    now = time.perf_counter()
    final = done >= self.total
    if self.finished or not (self.tty or final or
                             now - self.last >= self.every_s):
      return
    self.last, self.finished = now, final
    end = '\n' if final or not self.tty else ''
    self.stream.write(('\r' if self.tty else '') + self.line(done) + end)
    self.stream.flush()
