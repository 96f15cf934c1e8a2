"""Metric and image writers: `metrics.jsonl` always, TensorBoard via clu.

`clu.metric_writers` imports TensorFlow; where TensorFlow (the `tf` extra) is
not installed, or `tensorboard=False`, only `metrics.jsonl` and the PNGs are
written. Only the primary process writes; the others get a writer that
drops everything, so callers need no `if is_primary()`.
"""

import json
import math
import os
from typing import Any, Mapping, Optional

from absl import logging
import numpy as np
from PIL import Image

METRICS_FILE = 'metrics.jsonl'


def _jsonable(v: Any) -> Any:
  v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/Inf; keep them visible as strings.
  return v


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, in order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Writes scalars to `metrics.jsonl` (+ TensorBoard) and images to PNG."""

  def __init__(self, workdir: str, primary: bool = True,
               tensorboard: bool = True):
    self.workdir = workdir
    self.primary = primary
    self._tb = None
    if not primary:
      return
    os.makedirs(os.path.join(workdir, 'images'), exist_ok=True)
    self._path = os.path.join(workdir, METRICS_FILE)
    if tensorboard:
      try:
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._tb = metric_writers.SummaryWriter(
            os.path.join(workdir, 'tensorboard'))
      except ImportError as e:
        logging.info('TensorBoard writer off (%s); install the `tf` extra '
                     'for it. metrics.jsonl is written regardless.', e)

  def truncate_after(self, step: int) -> int:
    """Drops records with `step` > `step` (left by a run killed after its
    last checkpoint), so a resumed run's history equals an uninterrupted
    one's. Returns how many records were dropped, and says so in the log."""
    if not self.primary:
      return 0
    records = read_metrics(self.workdir)
    keep = [r for r in records if r.get('step', 0) <= step]
    dropped = len(records) - len(keep)
    if dropped:
      with open(self._path + '.tmp', 'w') as f:
        for r in keep:
          f.write(json.dumps(r) + '\n')
      os.replace(self._path + '.tmp', self._path)
      logging.warning('Resuming at step %d: dropped %d metrics.jsonl records '
                      'written after that checkpoint by the interrupted run.',
                      step, dropped)
    return dropped

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.primary:
      return
    record = {'step': int(step)}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      self._tb.write_scalars(int(step), {
          k: float(np.asarray(v)) for k, v in scalars.items()
          if np.ndim(v) == 0})

  def write_image(self, step: int, name: str, image: np.ndarray,
                  path: Optional[str] = None) -> Optional[str]:
    """Saves a uint8 HWC image as `images/<name>_step_<step>.png`."""
    if not self.primary:
      return None
    path = path or os.path.join(self.workdir, 'images',
                                f'{name}_step_{int(step):07d}.png')
    Image.fromarray(np.asarray(image)).save(path)
    if self._tb is not None:
      self._tb.write_images(int(step), {name: np.asarray(image)[None]})
    return path

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
