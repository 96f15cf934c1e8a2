r"""Rate-distortion from file sizes: PCA-VAE and quantizers vs JPEG and WebP.

Every point is a real file: `pcavae.codec` bitstreams (`.pcav`) for the
models, Pillow's JPEG (quality sweep, 4:2:0) and WebP (lossy, quality sweep)
for the image codecs, all on the same held-out photographs at their own size
(the `photo_patches` eval photos: coffee 600x400, flower 640x427,
grace_hopper 512x600; or `--images=DIR`, any folder). Bits per pixel =
8 x (sum of file bytes) / (sum of pixels); PSNR, SSIM (mean over images) and
LPIPS-AlexNet (mean over images) of the decoded files against the originals.

Models (trained here with the budget sweep's cell configs, `pcavae.sweep`, on
`photo_patches` at 32 px, or reused from `--sweep_dir=<budget sweep out>`):
  quick    PCA-VAE spatial 8x8 (D = 32, Q = 16) at several budgets (bits per
           32x32 tile, water-filled), PCA-VAE global (Q = 64) at several
           budgets, FSQ (8,5,5,5) 8x8 and VQ-VAE K=1024 8x8; 600 steps each.
  default  the same plus SimVQ, VQGAN-FC and LFQ at 8x8, 3000 steps each.

Also measured: the gap between `eval/entropy_bits_per_image` (the plug-in
entropy of the symbols on the eval crops; `pcavae.bits`) and the bits of
actual files for the same crops (each a one-tile image: header + payload),
and the coder's payload alone (all crops in one stream); compress and
decompress images/s and tiles/s (on whatever else the machine runs).

  python experiments/rate_distortion.py --quick      # ~15 min on 2 CPU cores
  python experiments/rate_distortion.py              # larger, ~1 h

Outputs in `--out` (default `workdirs/rate_distortion[_quick]`):
`results.json`, `results.md` (the tables) and `rate_distortion.png`
(`--figure` copies it, e.g. to docs/). Trained runs in `<out>/runs` are
reused on a rerun.
"""

import io
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from pcavae import codec as codec_lib
from pcavae import data
from pcavae import harness
from pcavae import sweep
from pcavae.data import image_folder
from pcavae.data import photo_patches

JPEG_QUALITIES = (5, 10, 20, 30, 50, 70, 90)
WEBP_QUALITIES = (0, 5, 10, 25, 50, 75, 90)

# (budget-sweep cell, PCA budgets in bits per tile or None for codes).
MODELS = {
    'quick': (('pca_8x8_q50', (128, 256, 512, 1024, 2048)),
              ('pca_global_q100', (64, 128, 256, 512)),
              ('fsq_8x8_l8555', None), ('vq_8x8_k1024', None)),
    'default': (('pca_8x8_q50', (128, 256, 512, 1024, 2048)),
                ('pca_global_q100', (64, 128, 256, 512)),
                ('fsq_8x8_l8555', None), ('vq_8x8_k1024', None),
                ('simvq_8x8_k1024', None), ('vqgan_fc_8x8_k1024', None),
                ('lfq_8x8_d10', None)),
}
STEPS = {'quick': 600, 'default': 3000}


# ---------------------------------------------------------------------------
# Quality of decoded images.
# ---------------------------------------------------------------------------


class Quality:
  """PSNR / SSIM / LPIPS-AlexNet of uint8 images of any size."""

  def __init__(self, lpips: bool = True):
    import jax  # pylint: disable=g-import-not-at-top
    from pcavae import metrics  # pylint: disable=g-import-not-at-top
    from pcavae.metrics import image as image_metrics  # pylint: disable=g-import-not-at-top
    self._ssim = jax.jit(image_metrics.ssim)
    self._lpips = jax.jit(metrics.make_lpips('alex')) if lpips else None

  def __call__(self, original: np.ndarray, decoded: np.ndarray
               ) -> Dict[str, float]:
    unit = lambda a: np.asarray(a, np.float32)[None] / 255.0
    out = {'psnr': codec_lib.psnr_uint8(original, decoded),
           'ssim': float(self._ssim(unit(original), unit(decoded))[0])}
    if self._lpips is not None:
      out['lpips'] = float(self._lpips(unit(original) * 2 - 1,
                                       unit(decoded) * 2 - 1)[0])
    return out


def _point(method: str, label: str, setting, images, files: List[bytes],
           decoded: List[np.ndarray], quality: Quality, **extra) -> Dict:
  """A rate-distortion point: bpp from the files, mean quality."""
  pixels = sum(im.shape[0] * im.shape[1] for im in images)
  scores = [quality(im, dec) for im, dec in zip(images, decoded)]
  row = {'method': method, 'label': label, 'setting': setting,
         'bpp': 8 * sum(len(f) for f in files) / pixels,
         'bytes': [len(f) for f in files], **extra}
  for key in scores[0]:
    row[key] = float(np.mean([s[key] for s in scores]))
  return row


# ---------------------------------------------------------------------------
# Image codecs (Pillow).
# ---------------------------------------------------------------------------


def pillow_round_trip(image: np.ndarray, fmt: str, quality: int
                      ) -> tuple:
  """`(file bytes, decoded uint8)` of one image through Pillow's encoder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  kwargs = {'quality': int(quality)}
  if fmt == 'WEBP':
    kwargs['method'] = 6  # slowest, best
  Image.fromarray(image).save(buf, format=fmt, **kwargs)
  data_ = buf.getvalue()
  with Image.open(io.BytesIO(data_)) as im:
    return data_, np.asarray(im.convert('RGB'), np.uint8)


def image_codec_points(images, quality: Quality,
                       jpeg_qualities=JPEG_QUALITIES,
                       webp_qualities=WEBP_QUALITIES) -> List[Dict]:
  rows = []
  for fmt, qualities in (('JPEG', jpeg_qualities), ('WEBP', webp_qualities)):
    for q in qualities:
      pairs = [pillow_round_trip(im, fmt, q) for im in images]
      method = {'JPEG': 'JPEG', 'WEBP': 'WebP'}[fmt]
      rows.append(_point(method, f'{method} q={q}', q, images,
                         [p[0] for p in pairs], [p[1] for p in pairs],
                         quality))
  return rows


# ---------------------------------------------------------------------------
# Model codecs.
# ---------------------------------------------------------------------------


def codec_point(label: str, codec: codec_lib.Codec, images,
                quality: Quality) -> Dict:
  """Compress and decompress every image; bpp from the files; speed."""
  codec.compress(np.zeros((1, 1, 3), np.uint8))  # compile, count codes
  t0 = time.perf_counter()
  packed = [codec.compress(im) for im in images]
  t_compress = time.perf_counter() - t0
  codec.decompress(packed[0].data)  # compile the decode of this rate
  t0 = time.perf_counter()
  decoded = [codec.decompress(p.data) for p in packed]
  t_decompress = time.perf_counter() - t0
  for p, d in zip(packed, decoded):  # the file decodes to what was measured
    if not np.array_equal(p.reconstruction, d):
      raise AssertionError(f'{label}: decompress differs from compress.')
  tiles = sum(p.num_tiles for p in packed)
  return _point(
      'PCA-VAE' if codec.kind == 'pca' else codec.kind, label, codec.rate,
      images, [p.data for p in packed], decoded, quality,
      workdir=codec.workdir, tiles=tiles,
      compress_images_per_s=len(images) / t_compress,
      compress_tiles_per_s=tiles / t_compress,
      decompress_images_per_s=len(images) / t_decompress,
      decompress_tiles_per_s=tiles / t_decompress)


def estimate_gap(codec: codec_lib.Codec, num_images: int) -> Dict:
  """`eval/entropy_bits_per_image` vs actual bits on the same eval crops.

  The plug-in estimate is `bits.SymbolCounts` / `bits.entropy_bits` exactly
  as the evaluator computes it (fitted to these very symbols); `file` is the
  mean size of one-tile `.pcav` files of the crops (header included),
  `payload` the range coder's bits per crop with all crops in one stream
  (no header, one flush).
  """
  from pcavae import bits  # pylint: disable=g-import-not-at-top
  config = codec.config
  source = data.get_split(config.dataset, config.resolution, 'eval')
  n = min(int(num_images), len(source))
  crops = np.stack([np.asarray(source[i]) for i in range(n)])
  encode, _, coding = codec.functions(codec.rate_kind, codec.rate)
  from pcavae import tiling  # pylint: disable=g-import-not-at-top
  from pcavae.data import pipeline  # pylint: disable=g-import-not-at-top
  symbols = tiling.map_tiles(
      lambda t: encode(codec.variables, pipeline.to_float(t)), crops,
      codec.batch_size).astype(np.int64)
  counts = bits.SymbolCounts()
  slots, ids = bits.stream_slots(coding)
  counts.update(symbols.reshape(n, -1)[:, slots], ids)
  estimate = counts.bits_per_image()
  streams = [(symbols[sel].reshape(-1), p) for sel, _, p in
             codec._streams(codec.rate_kind, codec.rate, n)]  # pylint: disable=protected-access
  _, payload = codec_lib.encode_streams(streams)
  files = [8 * len(codec.compress(c).data) for c in crops]
  return {'eval_images': n, 'entropy_bits_per_image': float(estimate),
          'payload_bits_per_image': payload / n,
          'file_bits_per_image': float(np.mean(files)),
          'nominal_bits_per_image': float(
              bits.latent_bits(codec._rate_config(  # pylint: disable=protected-access
                  codec.rate_kind, codec.rate)))}


def train_models(out: str, size: str, steps: int, sweep_dir: str = ''
                 ) -> Dict[str, str]:
  """Trains (or finds) each model's run; returns `{cell: workdir}`."""
  workdirs = {}
  for cell_name, _ in MODELS[size]:
    if sweep_dir and os.path.isdir(sweep.run_dir(sweep_dir, cell_name)):
      workdirs[cell_name] = sweep.run_dir(sweep_dir, cell_name)
      continue
    cell = sweep.cell_by_name(cell_name, 'quick')
    config = sweep.cell_config(cell, 'quick', steps=steps)
    sweep.train_cell(cell, config, out)
    workdirs[cell_name] = sweep.run_dir(out, cell_name)
  return workdirs


def held_out_photos(images_dir: str = '') -> tuple:
  """`(names, uint8 images)`: a folder's images, else the photo_patches
  eval photographs, each at its own size."""
  if images_dir:
    paths, _ = image_folder.list_images(os.path.abspath(images_dir))
    names = [os.path.relpath(p, images_dir) for p in paths]
  else:
    names = list(photo_patches.EVAL_PHOTOS)
    paths = [photo_patches.photo_path(n) for n in names]
  return names, [image_folder.read_rgb(p) for p in paths]


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------

_STYLE = {'JPEG': ('k', 'o'), 'WebP': ('0.5', 's')}


def plot(rows: Sequence[Dict], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = [k for k in ('psnr', 'ssim', 'lpips') if k in rows[0]]
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2))
  groups: Dict[str, List[Dict]] = {}
  for r in rows:
    groups.setdefault(_group(r), []).append(r)
  markers = iter('v^<>Dph*')
  for name, rs in groups.items():
    rs = sorted(rs, key=lambda r: r['bpp'])
    color, marker = _STYLE.get(name, (None, None))
    marker = marker or next(markers)
    for ax, k in zip(np.atleast_1d(axes), keys):
      ax.plot([r['bpp'] for r in rs], [r[k] for r in rs], marker=marker,
              color=color, label=name, linestyle='-' if len(rs) > 1 else '')
  for ax, k in zip(np.atleast_1d(axes), keys):
    ax.set_xscale('log')
    ax.set_xlabel('bits per pixel (file size)')
    ax.set_ylabel({'psnr': 'PSNR (dB)', 'ssim': 'SSIM',
                   'lpips': 'LPIPS-Alex (lower is better)'}[k])
    ax.grid(True, which='both', alpha=0.3)
  np.atleast_1d(axes)[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _group(row: Dict) -> str:
  if row['method'] in ('JPEG', 'WebP'):
    return row['method']
  return row['label'].split(' B=')[0]


def report(rows: List[Dict], gaps: List[Dict], meta: Dict) -> str:
  """The markdown tables: rate-distortion points, estimate vs file, speed."""
  names = ', '.join(meta['images'])
  points = []
  for r in sorted(rows, key=lambda r: (_group(r), r['bpp'])):
    setting = r['label'].replace(_group(r), '').strip() or '-'
    points.append([_group(r), setting, f"{r['bpp']:.3f}", f"{r['psnr']:.2f}",
                   f"{r['ssim']:.3f}", harness.fmt(r.get('lpips'), '.3f')])
  lines = [f"Held-out photographs at their own size: {names}"
           f" ({meta['pixels']:,} pixels).", '']
  lines += harness.markdown_table(
      ['codec', 'setting', 'bpp (files)', 'PSNR (dB)', 'SSIM', 'LPIPS'],
      points, align='llrrrr')
  lines += ['', 'Entropy estimate vs actual bits on the eval crops (one '
            'tile each), bits per crop:', '']
  estimates = []
  for g in gaps:
    ratio = g['file_bits_per_image'] / max(g['entropy_bits_per_image'], 1e-9)
    estimates.append([g['label'], f"{g['nominal_bits_per_image']:.0f}",
                      f"{g['entropy_bits_per_image']:.1f}",
                      f"{g['payload_bits_per_image']:.1f}",
                      f"{g['file_bits_per_image']:.1f}", f'{ratio:.2f}'])
  lines += harness.markdown_table(
      ['model', 'nominal', '`eval/entropy_bits_per_image`',
       'payload (one stream)', 'file (header + payload)', 'file / estimate'],
      estimates)
  lines += ['', 'Speed (measured on a machine shared with other jobs):', '']
  lines += harness.markdown_table(
      ['model', 'compress images/s', 'tiles/s', 'decompress images/s',
       'tiles/s'],
      [[r['label'], f"{r['compress_images_per_s']:.2f}",
        f"{r['compress_tiles_per_s']:.0f}",
        f"{r['decompress_images_per_s']:.2f}",
        f"{r['decompress_tiles_per_s']:.0f}"]
       for r in rows if 'compress_images_per_s' in r])
  return '\n'.join(lines) + '\n'


_LABELS = {'pca_8x8_q50': 'PCA-VAE 8x8 Q=16', 'pca_global_q100':
           'PCA-VAE global Q=64', 'fsq_8x8_l8555': 'FSQ (8,5,5,5) 8x8',
           'vq_8x8_k1024': 'VQ-VAE K=1024 8x8', 'simvq_8x8_k1024':
           'SimVQ K=1024 8x8', 'vqgan_fc_8x8_k1024': 'VQGAN-FC K=1024 8x8',
           'lfq_8x8_d10': 'LFQ d=10 8x8'}


def run(models: Sequence[tuple], images, names, out: str,
        quality: Optional[Quality] = None, gap_images: int = 256,
        jpeg_qualities=JPEG_QUALITIES, webp_qualities=WEBP_QUALITIES,
        batch_size: int = 64, count_images: Optional[int] = None,
        echo: Callable = print,
        title: str = 'Rate-distortion from file sizes, held-out photos at '
        'full size') -> Dict:
  """Measures every point and writes the report.

  Args:
    models: `(label, workdir, budgets or None)`.
    images: uint8 images; `names` their names.
    out: output folder.
    quality: the metric functions (default: PSNR, SSIM, LPIPS).
    gap_images: eval crops for the estimate-vs-file gap (0: skip).

  Returns:
    `{'rows', 'gaps', 'meta'}` as written to `out/results.json`.
  """
  os.makedirs(out, exist_ok=True)
  quality = quality or Quality()
  rows, gaps = [], []
  for label, workdir, budgets in models:
    for budget in budgets or [None]:
      c = codec_lib.Codec(workdir, budget=budget, batch_size=batch_size,
                          count_images=count_images)
      name = label + ('' if budget is None else f' B={budget}')
      rows.append(codec_point(name, c, images, quality))
      echo(f"{name}: {rows[-1]['bpp']:.3f} bpp, PSNR {rows[-1]['psnr']:.2f}")
      if gap_images:
        gaps.append({'label': name, **estimate_gap(c, gap_images)})
  rows += image_codec_points(images, quality, jpeg_qualities, webp_qualities)
  meta = {'images': list(names),
          'pixels': int(sum(im.shape[0] * im.shape[1] for im in images))}
  result = {'rows': rows, 'gaps': gaps, 'meta': meta}
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=1, default=float)
  text = report(rows, gaps, meta)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(text)
  plot(rows, os.path.join(out, 'rate_distortion.png'), title)
  return result


def _define_flags():
  # Defined only when run as a script: tests import this module beside other
  # experiments that define --out too.
  flags.DEFINE_bool('quick', False, 'The CPU-minutes version.')
  flags.DEFINE_string('out', None, 'Output folder (default '
                      'workdirs/rate_distortion[_quick]).')
  flags.DEFINE_string('images', '', 'A folder of held-out images '
                      '(default: the photo_patches eval photos).')
  flags.DEFINE_string('sweep_dir', '', 'Reuse runs/<cell> of a '
                      'budget sweep output when present.')
  flags.DEFINE_integer('steps', 0, 'Train steps (0: 600 quick, '
                       '3000 default).')
  flags.DEFINE_string('figure', '', 'Also copy the figure here.')


def main(argv):
  del argv
  f = flags.FLAGS
  size = 'quick' if f.quick else 'default'
  out = f.out or os.path.join(harness.WORKDIRS, 'rate_distortion' + (
      '_quick' if f.quick else ''))
  t0 = time.perf_counter()
  workdirs = train_models(out, size, f.steps or STEPS[size], f.sweep_dir)
  t_train = time.perf_counter() - t0
  names, images = held_out_photos(f.images)
  models = [(_LABELS[cell], workdirs[cell], budgets)
            for cell, budgets in MODELS[size]]
  run(models, images, names, out, title=(
      'Rate-distortion from file sizes, held-out photos at full size; '
      f'models: {f.steps or STEPS[size]} steps at 32 px on CPU'))
  print(open(os.path.join(out, 'results.md')).read())
  print(f'train {t_train / 60:.1f} min, measure '
        f'{(time.perf_counter() - t0 - t_train) / 60:.1f} min')
  if f.figure:
    shutil.copyfile(os.path.join(out, 'rate_distortion.png'), f.figure)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  _define_flags()
  app.run(main)
