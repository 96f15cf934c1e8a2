r"""Reconstruct every image in a folder with a trained model, one jitted fn.

  python -m pcavae.reconstruct --workdir=workdirs/pcavae_runlocal \
    --input=my_photos/ --output=recons/

(or the console script `pcavae-reconstruct` with the same flags). Restores the
newest good checkpoint in `--workdir` and walks `--input` recursively (or
takes one file). Every readable image (any format Pillow opens; any mode:
gray, RGBA, palette, 16-bit; EXIF orientation applied; the first frame of an
animation, with a note) is read as `pcavae.imageio` says and

- `--full_size` (the default): reconstructed at its own size. The image is
  cut into tiles of the run's resolution (`pcavae.tiling`: reflect-padded at
  the right/bottom edges, cropped back after), since the model only ever saw
  that size (a `spatial` PCA holds one basis per latent location);
- `--nofull_size`: center-cropped to a square and resized to the run's
  resolution, as training and eval see images.

Tiles would show their borders as a grid of seams, so by default they
overlap by a quarter of their size (`--overlap`, in px: neighbouring tiles
share that many pixels and are cross-faded, `tiling.tile_overlapping` /
`tiling.blend`), at ~(R / (R - N))^2 times the tiles; `--overlap=0` cuts
plain tiles.

Each is written to `<output>/<relative path>.png` (the extension kept,
`a.jpg.png`, where two inputs would share a name), or with `--side_by_side`
as input | reconstruction. Tiles of all images go through the same jitted
function in fixed-size batches (the last one zero-padded), so it compiles
once. Files that cannot be decoded (truncated, corrupt, not an image) or
whose output cannot be written are skipped and named with the reason on
stderr; the command ends with `wrote N, skipped M` and exits 0 when at least
one image was written, 1 otherwise.

`<output>/metrics.csv` holds one row per written image: PSNR and SSIM of the
reconstruction against the model's input (the whole image, uint8 as written,
in [0, 1]) and LPIPS-AlexNet where the image allows it (both sides >= 32 px
and at most `MAX_LPIPS_PIXELS`; empty otherwise, as is SSIM under 11 px).
"""

import csv
import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from pcavae import cli
from pcavae import imageio
from pcavae import tiling

METRICS_FILE = 'metrics.csv'
CSV_COLUMNS = ('input', 'output', 'height', 'width', 'tiles', 'psnr', 'ssim',
               'lpips_alex')
# LPIPS-AlexNet needs >= 32 px (its 11x11 stride-4 stem); above this many
# pixels its activations cost GBs of host memory, so it is left out.
MIN_LPIPS_SIDE = 32
MAX_LPIPS_PIXELS = 4096 * 4096
MIN_SSIM_SIDE = 11  # dm-pix's 11x11 Gaussian window, 'valid' filtering


@dataclasses.dataclass
class Result:
  """What `reconstruct_folder` did."""
  written: list[str]  # output PNG paths, in input order
  skipped: list[tuple[str, str]]  # (input path, reason)
  notes: list[tuple[str, str]]  # (input path, note), e.g. first frame only
  metrics_path: str  # <output>/metrics.csv
  rows: list[dict]  # the rows of metrics.csv


def model_input(image: np.ndarray, resolution: int, full_size: bool
                ) -> np.ndarray:
  """The uint8 RGB image the model reconstructs: `image` itself at full
  size, else its center crop resized to `resolution` (as in training)."""
  if full_size:
    return image
  from pcavae.data import sources  # pylint: disable=g-import-not-at-top
  return sources.center_crop_resize(Image.fromarray(image), resolution)


def to_model_range(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1], the model's range."""
  return image.astype(np.float32) / 127.5 - 1.0


def make_tile_fn(model, variables, batch_size: int
                 ) -> Callable[[np.ndarray], np.ndarray]:
  """`tiles (n, R, R, 3) in [-1, 1] -> reconstructions`, through one jitted
  function in fixed batches of `batch_size` (compiled once)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  fn = jax.jit(train.make_reconstruct_fn(model))
  return lambda tiles: tiling.map_tiles(lambda b: fn(variables, b), tiles,
                                        batch_size)


def reconstruct_images(images: Sequence[np.ndarray], tile_fn: Callable,
                       resolution: int, overlap: int = 0) -> list[np.ndarray]:
  """Reconstructs uint8 `(H, W, 3)` images of any size by tiling; uint8 out.

  With `overlap` > 0 neighbouring tiles share that many pixels and are
  cross-faded (`tiling.tile_overlapping` / `tiling.blend`), which hides the
  seams at tile borders for ~(R / (R - overlap))^2 times the tiles.
  The tiles of all `images` go through `tile_fn` together, so the padding of
  the last fixed-size batch is paid once per call, not once per image.
  """
  if overlap:
    cut = [tiling.tile_overlapping(to_model_range(im), resolution, overlap)
           for im in images]
    stitch = tiling.blend
  else:
    cut = [tiling.tile(to_model_range(im), resolution) for im in images]
    stitch = tiling.untile
  if not cut:
    return []
  recon = tile_fn(np.concatenate([tiles for tiles, _ in cut]))
  out, start = [], 0
  for tiles, grid in cut:
    out.append(to_uint8(stitch(recon[start:start + len(tiles)], grid)))
    start += len(tiles)
  return out


def num_tiles(shape: Sequence[int], resolution: int, overlap: int) -> int:
  """Tiles `reconstruct_images` cuts an image of `shape` into."""
  return tiling.overlap_grid_for(shape[0], shape[1], resolution,
                                 overlap).num_tiles


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] float -> uint8, as training's image grids (`viz.to_uint8`)."""
  from pcavae import viz  # pylint: disable=g-import-not-at-top
  return viz.to_uint8(x)


class ImageMetrics:
  """PSNR / SSIM / LPIPS-alex of one uint8 image pair (`pcavae.metrics`)."""

  def __init__(self, lpips: bool = True):
    from pcavae import metrics  # pylint: disable=g-import-not-at-top
    self._metrics = metrics
    self._lpips = metrics.make_lpips('alex') if lpips else None

  def __call__(self, original: np.ndarray, recon: np.ndarray) -> dict:
    h, w = original.shape[:2]
    x = original[None].astype(np.float32) / 255.0
    y = recon[None].astype(np.float32) / 255.0
    out = {'psnr': float(self._metrics.psnr(x, y)[0]), 'ssim': None,
           'lpips_alex': None}
    if min(h, w) >= MIN_SSIM_SIDE:
      out['ssim'] = float(self._metrics.ssim(x, y)[0])
    if (self._lpips is not None and min(h, w) >= MIN_LPIPS_SIDE
        and h * w <= MAX_LPIPS_PIXELS):
      out['lpips_alex'] = float(self._lpips(2 * x - 1, 2 * y - 1)[0])
    return out


def default_overlap(resolution: int) -> int:
  """The overlap of full-size tiles unless one is given: a quarter of the
  tile. On three held-out photographs (32 px tiles, docs/usage.md) it took
  the seams' grid away (LPIPS 0.307 -> 0.268) for 1.7x the tiles; half the
  tile gained little more (0.261) for 3.6x."""
  return resolution // 4


def reconstruct_folder(workdir: str, input_dir: str, output_dir: str,
                       batch_size: int = 32, side_by_side: bool = False,
                       full_size: bool = True, lpips: bool = True,
                       progress: bool = True,
                       overlap: Optional[int] = None) -> Result:
  """Reconstructs every readable image under `input_dir` into `output_dir`.

  Args:
    workdir: a training run (`config.json`, `checkpoints/`).
    input_dir: a folder (walked recursively) or one image file.
    output_dir: where the PNGs and `metrics.csv` go (created).
    batch_size: tiles per call of the jitted model.
    side_by_side: write input | reconstruction instead of the reconstruction.
    full_size: tile each image at its own size (else center crop + resize
      to the run's resolution).
    lpips: add LPIPS-AlexNet to `metrics.csv` where the image allows.
    progress: draw a progress bar on stderr.
    overlap: pixels shared by neighbouring tiles, cross-faded (0: none;
      None: a quarter of the run's resolution, `default_overlap`).

  Returns:
    A `Result`; `written` is empty when no image could be read or written.
    `metrics.csv` holds the images written, even when a later one fails.

  Raises:
    FileNotFoundError: `input_dir` does not exist, or `workdir` holds no run.
    OSError: `metrics.csv` cannot be written (one line naming it).
  """
  from pcavae import train  # pylint: disable=g-import-not-at-top

  if not os.path.exists(input_dir):
    raise FileNotFoundError(f'--input={input_dir} does not exist.')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be positive.')
  if overlap is not None and overlap < 0:
    raise ValueError(f'overlap={overlap} must be >= 0.')
  paths, other = imageio.list_inputs(input_dir, exclude=output_dir)
  skipped, notes = list(other), []
  names = imageio.output_names(imageio.relative_paths(paths, input_dir))
  config, model, variables, step = train.restore_model(workdir)
  r = config.resolution
  if overlap is None:
    overlap = default_overlap(r)
  if overlap >= r:
    raise ValueError(f'overlap={overlap} must be less than the run\'s '
                     f'resolution, {r} px.')
  tile_fn = make_tile_fn(model, variables, batch_size)
  measure = ImageMetrics(lpips=lpips)
  logging.info('Reconstructing %d files with the step-%d model of %s, %s.',
               len(paths), step, workdir,
               'at full size in %dx%d tiles' % (r, r) if full_size
               else 'center-cropped and resized to %d px' % r)
  bar = cli.Progress(len(paths), 'reconstruct') if progress else None
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise OSError(f'cannot create {output_dir}: {e.strerror or e}') from e
  written, rows, pending = [], [], []

  def flush():
    recons = reconstruct_images([im for _, _, im in pending], tile_fn, r,
                                overlap)
    for (path, name, image), recon in zip(pending, recons):
      out = os.path.join(output_dir, name)
      try:
        imageio.save_png(np.concatenate([image, recon], axis=1)
                         if side_by_side else recon, out)
      except OSError as e:
        skipped.append((path, str(e)))
        continue
      written.append(out)
      rows.append({'input': os.path.relpath(path, input_dir)
                            if os.path.isdir(input_dir) else path,
                   'output': name, 'height': image.shape[0],
                   'width': image.shape[1],
                   'tiles': num_tiles(image.shape, r, overlap),
                   **measure(image, recon)})
    pending.clear()

  # Images are decoded one at a time and flushed once they fill a batch of
  # tiles, so memory stays near one image plus one batch.
  pending_tiles = 0
  metrics_path = os.path.join(output_dir, METRICS_FILE)
  try:
    for i, (path, name) in enumerate(zip(paths, names)):
      try:
        image, image_notes = imageio.read_image(path)
        image = model_input(image, r, full_size)
      except OSError as e:
        reason = str(e)
        skipped.append((path, reason[len(path) + 2:]
                        if reason.startswith(path + ': ') else reason))
      else:
        notes.extend((path, n) for n in image_notes)
        pending.append((path, name, image))
        pending_tiles += num_tiles(image.shape, r, overlap)
        if pending_tiles >= batch_size:
          flush()
          pending_tiles = 0
          if bar:
            bar.update(i + 1)
    flush()
  finally:  # the rows of the images written, whatever stopped the loop
    write_metrics(rows, metrics_path)
  if bar:
    bar.update(len(paths))
  return Result(written, skipped, notes, metrics_path, rows)


def write_metrics(rows: Sequence[dict], path: str) -> None:
  """Writes `metrics.csv` (`CSV_COLUMNS`); OSError on one line."""
  try:
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
      writer.writeheader()
      for row in rows:
        writer.writerow({k: ('' if v is None else
                             f'{v:.6g}' if isinstance(v, float) else v)
                         for k, v in row.items()})
  except OSError as e:
    raise OSError(f'cannot write {path}: {e.strerror or e}') from e


def _mean(rows: Sequence[dict], key: str) -> str:
  values = [r[key] for r in rows if r[key] is not None and math.isfinite(
      r[key])]
  return f'{np.mean(values):.4g}' if values else 'n/a'


def define_flags() -> None:
  """Defines the command's flags. Called by the entry point only, so that
  importing this module defines none and the package's commands can be
  imported side by side (tests, notebooks)."""
  flags.DEFINE_string('workdir', None, 'Training run directory.')
  flags.DEFINE_string('input', None, 'Folder of images (walked recursively) '
                      'or one image file.')
  flags.DEFINE_string('output', None, 'Where to write PNGs and metrics.csv.')
  flags.DEFINE_integer('batch_size', 32, 'Tiles per jitted call.')
  flags.DEFINE_bool('side_by_side', False,
                    'Write input | reconstruction pairs.')
  flags.DEFINE_bool(
      'full_size', True,
      'Reconstruct each image at its own size by tiling (default); '
      '--nofull_size center-crops and resizes to the run\'s resolution.')
  flags.DEFINE_bool('lpips', True, 'LPIPS-AlexNet per image in metrics.csv.')
  flags.DEFINE_bool('progress', True, 'Progress bar on stderr.')
  flags.DEFINE_integer(
      'overlap', None, 'Pixels shared by neighbouring tiles, cross-faded to '
      'hide the seams at tile borders (default: a quarter of the run\'s '
      'resolution; 0: plain tiles; costs ~(R / (R - overlap))^2 times the '
      'tiles).')
  flags.mark_flags_as_required(['workdir', 'input', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if f.batch_size < 1:
    raise app.UsageError(f'--batch_size={f.batch_size} must be positive.')
  if f.overlap is not None and f.overlap < 0:
    raise app.UsageError(f'--overlap={f.overlap} must be >= 0.')
  output = cli.make_workdir(f.output, flag='--output')
  cli.enable_compilation_cache()
  try:
    from pcavae import train  # pylint: disable=g-import-not-at-top
    resolution = train.load_config(f.workdir).resolution
    if f.overlap is not None and f.overlap >= resolution:
      raise SystemExit(f'pcavae.reconstruct: --overlap={f.overlap} must be '
                       f'less than the run\'s resolution, {resolution} px.')
    result = reconstruct_folder(
        f.workdir, f.input, output, f.batch_size, f.side_by_side,
        f.full_size, f.lpips, f.progress, f.overlap)
  except OSError as e:  # FileNotFoundError too: a missing input or run
    raise SystemExit(f'pcavae.reconstruct: {e}') from None
  n, m = len(result.written), len(result.skipped)
  for path, note in result.notes:
    imageio.warn(f'note {path}: {note}')
  for path, reason in result.skipped:
    imageio.warn(f'skipped {path}: {reason}')
  print(f'wrote {n}, skipped {m}: {output} (mean PSNR '
        f'{_mean(result.rows, "psnr")} dB, SSIM {_mean(result.rows, "ssim")}, '
        f'LPIPS {_mean(result.rows, "lpips_alex")}; per image in '
        f'{result.metrics_path})', flush=True)
  if not n:
    raise SystemExit(f'pcavae.reconstruct: no image could be read under '
                     f'--input={f.input} ({m} skipped, named above).')


def run():
  """Console script `pcavae-reconstruct`."""
  cli.setup_logging()
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
