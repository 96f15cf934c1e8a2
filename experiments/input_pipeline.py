r"""Input pipeline throughput: each dataset's train pipeline alone, in images/s.

  python experiments/input_pipeline.py --out=out/input_pipeline
  python experiments/input_pipeline.py --quick --out=/tmp/ip      # seconds

For each dataset (`photo_patches`; `image_folder` over a folder of 256 px
JPEGs that the script writes under `--out`; `fashion_mnist` from
`--fashion_mnist_dir` or where pcavae.data looks for it), each resolution and
each worker count it times `pcavae.data.pipeline.train_iterator` (the
trainer's pipeline: shuffle, batch, uint8 -> float32) for `--batches` batches
of `--batch` images after one warm-up batch:

  workers 0   read and decode in the consuming thread: one core's worth
              (images/s per core);
  workers k   k grain worker processes (`config.data_workers = k`, as the
              trainer runs them), the way to use more cores than one for
              decoding.

It also estimates what a GPU would consume: the train step's FLOPs (XLA's
cost analysis of the lowered `spatial16` step, PCA bottleneck, batch
`--batch`) at `--mfu` of `--peak_tflops` (default 40% of 989 TFLOP/s, an
H100's dense bf16 peak), and says how many cores of this pipeline would keep
such a GPU fed. One JSON line per measurement goes to stdout and
`<out>/input_pipeline.jsonl`, a markdown table to `<out>/input_pipeline.md`.
Each record carries a checksum of the first timed batch: it must not depend on
the worker count (the stream is a function of the seed and the step alone).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

DATASETS = ('photo_patches', 'image_folder', 'fashion_mnist')


def make_jpeg_folder(path: str, count: int, size: int = 256) -> str:
  """Writes `count` smooth random `size` px RGB JPEGs (quality 90) once."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(count):
    name = os.path.join(path, f'img_{i:05d}.jpg')
    if os.path.exists(name):
      continue
    low = rng.uniform(0, 255, (size // 16, size // 16, 3)).astype(np.uint8)
    image = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    noise = rng.normal(0, 8, (size, size, 3))
    array = np.clip(np.asarray(image, np.float32) + noise, 0, 255)
    Image.fromarray(array.astype(np.uint8)).save(name, quality=90)
  return path


def dataset_config(name: str, args):
  from pcavae import data  # pylint: disable=g-import-not-at-top
  c = data.default_config()
  c.name = name
  if name == 'image_folder':
    c.path = make_jpeg_folder(os.path.join(args.out, 'jpegs'), args.images)
  if name == 'fashion_mnist' and args.fashion_mnist_dir:
    c.data_dir = args.fashion_mnist_dir
  return c


def time_pipeline(source, batch: int, batches: int, workers: int, seed=0):
  """Seconds per batch (median), CPU seconds of this process per image, and
  the first timed batch's checksum."""
  from pcavae.data import pipeline  # pylint: disable=g-import-not-at-top
  if workers:
    # The trainer's iterator with `config.data_workers = workers`.
    it = pipeline.train_iterator(source, global_batch_size=batch, seed=seed,
                                 workers=workers)
  else:
    it = pipeline.train_iterator(source, global_batch_size=batch, seed=seed,
                                 num_threads=0, prefetch=0)
  first = next(it)  # warm-up (starts the workers)
  times = []
  checksum = None
  c0 = time.process_time()
  t_all = time.perf_counter()
  for k in range(batches):
    t0 = time.perf_counter()
    x = next(it)
    times.append(time.perf_counter() - t0)
    if k == 0:
      checksum = float(np.asarray(x, np.float64).sum())
      shape, dtype = x.shape, str(x.dtype)
      lo, hi = float(x.min()), float(x.max())
  wall = time.perf_counter() - t_all
  cpu = time.process_time() - c0
  del first, it
  return {'batch_s_median': statistics.median(times),
          'images_per_s': batch * batches / wall,
          'main_process_cpu_s_per_image': cpu / (batch * batches),
          'checksum': checksum, 'shape': list(shape), 'dtype': dtype,
          'min': lo, 'max': hi}


def step_flops(res: int, batch: int):
  """FLOPs of one `spatial16` PCA train step (XLA's cost analysis of the
  lowered, uncompiled step; abstract inputs, nothing allocated)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pcavae import configlib, sharding, train  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configlib.load(os.path.join(root, 'configs', 'pcavae.py') +
                          ':setting=spatial16')
  config.resolution = res
  config.batch_size = batch
  mesh = sharding.make_mesh(config)
  model = train.create_model(config, mesh)
  tx, schedule = train.make_optimizer(config)
  init_fn = train.make_init_fn(model, tx, config)
  state = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((batch, res, res, 3), jax.numpy.float32)
  lowered = jax.jit(train.make_train_step(model, tx, schedule,
                                          config)).lower(state, x)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--datasets', default=','.join(DATASETS))
  p.add_argument('--resolutions', default='64,256')
  p.add_argument('--workers', default='0,1,2',
                 help='Worker counts; 0 reads in the consuming thread.')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--batches', type=int, default=20)
  p.add_argument('--images', type=int, default=256,
                 help='JPEGs written for image_folder.')
  p.add_argument('--fashion_mnist_dir',
                 default=os.environ.get('FASHION_MNIST_DIR', ''))
  p.add_argument('--peak_tflops', type=float, default=989.0)
  p.add_argument('--mfu', type=float, default=0.4)
  p.add_argument('--no_flops', action='store_true',
                 help='Skip the GPU estimate (the step FLOPs).')
  p.add_argument('--quick', action='store_true',
                 help='64 px, workers 0 and 1, 3 batches, 48 JPEGs.')
  p.add_argument('--out', default='out/input_pipeline')
  args = p.parse_args(argv)
  if args.quick:
    args.resolutions, args.workers, args.batches = '64', '0,1', 3
    args.images = min(args.images, 48)
  os.makedirs(args.out, exist_ok=True)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
    flags.FLAGS.mark_as_parsed()
  from pcavae import data  # pylint: disable=g-import-not-at-top
  records = []

  def emit(rec):
    records.append(rec)
    line = json.dumps(rec)
    print(line, flush=True)
    with open(os.path.join(args.out, 'input_pipeline.jsonl'), 'a') as f:
      f.write(line + '\n')

  resolutions = [int(r) for r in args.resolutions.split(',')]
  for name in args.datasets.split(','):
    for res in resolutions:
      try:
        splits = data.get_splits(dataset_config(name, args), res)
      except ValueError as e:  # e.g. no Fashion-MNIST on this machine
        emit({'measurement': f'pipeline/{name}', 'resolution': res,
              'skipped': str(e).split('\n')[0]})
        continue
      for workers in [int(w) for w in args.workers.split(',')]:
        r = time_pipeline(splits.train, args.batch, args.batches, workers)
        emit(dict({'measurement': f'pipeline/{name}', 'resolution': res,
                   'workers': workers, 'batch': args.batch,
                   'batches': args.batches, 'num_train': len(splits.train),
                   'cpu_count': os.cpu_count(),
                   'load_avg_1min': round(os.getloadavg()[0], 2)}, **r))
  if not args.no_flops:
    for res in resolutions:
      flops = step_flops(res, args.batch)
      gpu = args.mfu * args.peak_tflops * 1e12 / (flops / args.batch)
      emit({'measurement': 'gpu_estimate', 'resolution': res,
            'flops_per_image': flops / args.batch, 'mfu': args.mfu,
            'peak_tflops': args.peak_tflops, 'gpu_images_per_s': gpu})

  lines = ['| dataset | res | workers | images/s | CPU s / image (main) | '
           'load |', '|---|---|---|---|---|---|']
  gpus = {r['resolution']: r['gpu_images_per_s'] for r in records
          if r['measurement'] == 'gpu_estimate'}
  for r in records:
    if 'images_per_s' in r:
      lines.append(f"| {r['measurement'].split('/')[1]} | {r['resolution']} "
                   f"| {r['workers']} | {r['images_per_s']:.0f} | "
                   f"{r['main_process_cpu_s_per_image']:.4f} | "
                   f"{r['load_avg_1min']} |")
  for res, gpu in gpus.items():
    per_core = [r['images_per_s'] for r in records
                if r.get('workers') == 0 and r['resolution'] == res]
    need = ', '.join(f'{gpu / v:.0f}' for v in per_core)
    lines.append(f'| GPU estimate | {res} | | {gpu:.0f} | cores needed at '
                 f'one core\'s rate, per dataset: {need} | |')
  with open(os.path.join(args.out, 'input_pipeline.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  sys.exit(main())
