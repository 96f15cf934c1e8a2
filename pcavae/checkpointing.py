"""A thin wrapper over orbax's CheckpointManager.

Checkpoints live in `workdir/checkpoints/<step>/`. Orbax writes each one into a
temporary directory and renames it when complete, so a process killed mid-save
leaves no step that looks finished. Restore walks the finished steps from the
newest down and takes the first that reads back; a damaged one is skipped with
a warning that names it and is moved (never deleted) to
`workdir/checkpoints_damaged/<step>` for inspection, so that the step can be
written again by the resumed run.
"""

import os
from typing import Any, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Save on schedule, keep the last N, restore the newest good one."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    # orbax needs an absolute path; a relative one would fail every restore.
    directory = os.path.abspath(directory)
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options)
    self.skipped_steps: list[int] = []

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, force: bool = True) -> bool:
    """Starts saving `state` at `step` (asynchronously); returns whether."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)

  def restore_latest(self, abstract_state: Any) -> Tuple[Optional[Any], int]:
    """Returns `(state, step)` of the newest readable checkpoint, or `(None, 0)`.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings: the
        shapes, dtypes and placement to restore into.
    """
    self.skipped_steps = []
    errors = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint at step %d in %s could not be restored '
                        '(%s: %s); trying an older one.', step,
                        self.directory, type(e).__name__, str(e)[:300])
        self.skipped_steps.append(step)
        errors.append(f'step {step}: {type(e).__name__}: {str(e)[:200]}')
        continue
      # Only now that an older one reads back are the newer ones known to be
      # damaged (rather than unreadable by this code): move them aside.
      for bad in self.skipped_steps:
        moved = self._move_aside(bad)
        logging.warning('Moved the damaged checkpoint of step %d to %s (not '
                        'deleted) so that the step can be saved again.', bad,
                        moved)
      if self.skipped_steps:
        logging.warning('Resumed from step %d after skipping damaged '
                        'checkpoints %s.', step, self.skipped_steps)
      return state, step
    if self.skipped_steps:
      # Every checkpoint failed: more likely a code/config change than damage
      # to all of them. Refuse rather than start over (which would later
      # rotate them away).
      raise RuntimeError(
          f'No checkpoint in {self.directory} could be restored:\n  ' +
          '\n  '.join(errors) + '\nNothing was moved or deleted. Use another '
          '--workdir, or move the checkpoints away to start from scratch.')
    return None, 0

  def _move_aside(self, step: int) -> Optional[str]:
    """Renames a damaged step directory to `<dir>_damaged/<step>[.n]`."""
    src = os.path.join(self.directory, str(step))
    if not os.path.isdir(src):
      return None
    if jax.process_index() == 0:
      dst_root = os.path.normpath(self.directory) + '_damaged'
      os.makedirs(dst_root, exist_ok=True)
      dst, n = os.path.join(dst_root, str(step)), 0
      while os.path.exists(dst):
        n += 1
        dst = os.path.join(dst_root, f'{step}.{n}')
      os.rename(src, dst)
    else:
      dst = os.path.normpath(self.directory) + f'_damaged/{step}'
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'pcavae_move_aside_{step}')
    self._manager.reload()
    return dst

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding structs of a pytree of arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, 'sharding', None)),
      tree)
