r"""Reconstruct every image in a folder with a trained model, one jitted fn.

  python -m pcavae.reconstruct --workdir=workdirs/pca --input=photos/ \
    --output=recons/

Restores the newest good checkpoint in `--workdir`, center-crops and resizes
each JPEG/PNG under `--input` (recursively) to the run's resolution, and
writes `<output>/<relative path>.png`: the reconstruction, or with
`--side_by_side` the input and its reconstruction next to each other. Images
go through in fixed-size batches (the last one padded) so the function
compiles once.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training run directory.')
_INPUT = flags.DEFINE_string('input', None, 'Folder of JPEG/PNG images.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write PNGs.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Images per jitted call.')
_SIDE = flags.DEFINE_bool('side_by_side', False,
                          'Write input | reconstruction pairs.')
flags.mark_flags_as_required(['workdir', 'input', 'output'])


def reconstruct_folder(workdir: str, input_dir: str, output_dir: str,
                       batch_size: int = 32, side_by_side: bool = False
                       ) -> list[str]:
  """Writes reconstructions of every image under `input_dir`; returns paths."""
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae import viz  # pylint: disable=g-import-not-at-top
  from pcavae.data import image_folder  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f'--input={input_dir!r} is not a directory.')
  paths, skipped = image_folder.list_images(os.path.abspath(input_dir))
  if not paths:
    raise FileNotFoundError(f'No readable JPEG/PNG under --input={input_dir!r}'
                            f' ({len(skipped)} unreadable files skipped).')
  config, model, variables, step = train.restore_model(workdir)
  r = config.resolution
  fn = jax.jit(train.make_reconstruct_fn(model))
  logging.info('Reconstructing %d images at %d px with the step-%d model.',
               len(paths), r, step)
  written = []
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    batch = np.zeros((batch_size, r, r, 3), np.float32)
    for i, p in enumerate(chunk):
      batch[i] = image_folder.load_image(p, r).astype(np.float32) / 127.5 - 1
    recon = np.asarray(fn(variables, batch))
    for i, p in enumerate(chunk):
      rel = os.path.relpath(p, os.path.abspath(input_dir))
      out = os.path.join(output_dir, os.path.splitext(rel)[0] + '.png')
      os.makedirs(os.path.dirname(out), exist_ok=True)
      pair = np.concatenate([batch[i], recon[i]], axis=1)
      image = viz.to_uint8(pair if side_by_side else recon[i])
      Image.fromarray(image).save(out)
      written.append(out)
  return written


def main(argv):
  del argv
  written = reconstruct_folder(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                               _BATCH.value, _SIDE.value)
  print(f'Wrote {len(written)} reconstructions to {_OUTPUT.value}', flush=True)


def run():
  """Console script `pcavae-reconstruct`."""
  from pcavae import main as cli  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  app.run(main)


if __name__ == '__main__':
  run()
