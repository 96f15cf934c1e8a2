"""Eval cost of LPIPS-alex, LPIPS-vgg and FID Inception features.

    python experiments/metrics_timing.py [--size 64] [--batch 50] [--num 200]
    python experiments/metrics_timing.py --quick --json=/tmp/timing.json

Times `--num` images (after one warm-up batch that includes compilation) in
batches of `--batch` at `--size`x`--size` RGB, and prints seconds per 1000
images, extrapolated linearly. Inception needs the converted weights
(`python -m pcavae.metrics.convert_inception`); it is skipped otherwise.
`--json` also writes the rows (metric, images timed, seconds). `--quick` is a
smoke run (2 images of 32x32, no 2048-d Frechet timing), not a measurement.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from pcavae.metrics import extract_features, make_inception_features
from pcavae.metrics import make_lpips


def _time(fn, batches):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*batches[0]))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for args in batches:
    jax.block_until_ready(fn(*args))
  return compile_s, time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=50)
  parser.add_argument('--num', type=int, default=200)
  parser.add_argument('--json', default=None,
                      help='Also write the rows to this JSON file.')
  parser.add_argument('--quick', action='store_true',
                      help='Smoke run: --size 32 --batch 2 --num 2, no '
                      'Frechet timing.')
  args = parser.parse_args()
  if args.quick:
    args.size, args.batch, args.num = 32, 2, 2

  rng = np.random.default_rng(0)
  nb = max(1, args.num // args.batch)
  n = nb * args.batch
  shape = (args.batch, args.size, args.size, 3)
  xs = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(nb)]
  ys = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(nb)]
  print(f'backend={jax.default_backend()} devices={jax.devices()} '
        f'cpus={os.cpu_count()} images={n} batch={args.batch} '
        f'size={args.size}')

  rows = []
  for net in ('alex', 'vgg'):
    fn = make_lpips(net)
    c, t = _time(fn, list(zip(xs, ys)))
    rows.append((f'lpips_{net}', c, t))
  try:
    feats = make_inception_features()
  except FileNotFoundError as e:
    print(f'inception skipped: {e}')
  else:
    c, t = _time(feats, [(x,) for x in xs])
    rows.append(('inception_pool3', c, t))
  if not args.quick and 'inception_pool3' in [r[0] for r in rows]:
    # Frechet distance itself (2048-d): covariances + matrix square root.
    from pcavae.metrics import rfid_from_features  # pylint: disable=g-import-not-at-top
    f = extract_features(feats, xs[0], batch_size=args.batch)
    big = np.random.default_rng(1).normal(size=(4096, 2048)) + f.mean(0)
    for method in ('sqrtm', 'eigh'):
      t0 = time.perf_counter()
      rfid_from_features(big, big[::-1] * 1.1, method=method)
      print(f'frechet_distance method={method} (2048-d, incl. covariances of '
            f'2x4096 features): {time.perf_counter() - t0:.2f} s per call')

  print(f'{"metric":<18}{"warmup+compile s":>18}{"s / 1000 images":>18}')
  for name, c, t in rows:
    print(f'{name:<18}{c:>18.2f}{t / n * 1000:>18.2f}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump([{'metric': name, 'images': n, 'size': args.size,
                  'batch': args.batch, 'compile_seconds': c,
                  'seconds_per_1000': t / n * 1000} for name, c, t in rows],
                f, indent=1)


if __name__ == '__main__':
  main()
