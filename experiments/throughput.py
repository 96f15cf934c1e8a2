r"""Train-step and reconstruction throughput of the PCA-VAE and the bottleneck's
share of the step.

  python experiments/throughput.py --out=out/throughput            # CPU, 64 px
  python experiments/throughput.py --sizes=64,256 --dtypes=float32,bfloat16 \
    --out=out/throughput_gpu                                        # a GPU

For each (resolution, compute dtype) it builds the `spatial16` setting of
configs/pcavae.py (channels 128, 256; D = 256; 16x16 latent at 64 px) with
batch 16 and times, each as the median of `--steps` calls after compilation:

  train/<bottleneck>   one jitted, donated train step (forward, backward, Adam,
                       the bottleneck's own update) with the PCA bottleneck
                       (Q = 256), `vq` with K = 8192 (when registered), and the
                       identity, at the same latent shape: the bottleneck's
                       share of the step is (t_kind - t_identity) / t_kind;
  reconstruct          the jitted eval-mode forward pass;
  compile              compile time of the train step;
  memory               peak device memory (GPU/TPU) or the process's peak RSS
                       (CPU).

One JSON line per measurement goes to stdout and `<out>/throughput.jsonl`, and
a markdown table to `<out>/throughput.md`. On a GPU it also reports model FLOPs
utilisation against `--peak_tflops` (XLA's cost analysis counts the FLOPs).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(res: int, dtype: str, kind: str, batch: int):
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  c = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') +
                     ':setting=spatial16')
  c.resolution = res
  c.batch_size = batch
  c.compute_dtype = dtype
  if kind == 'identity':
    c.model.bottleneck = {'kind': 'identity'}
  elif kind == 'vq':
    c.model.bottleneck = {'kind': 'vq', 'codebook_size': 8192}
  return c


def _time(fn, steps: int):
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_train(res, dtype, kind, batch, steps):
  """Median train-step time, compile time and FLOPs for one bottleneck."""
  from pcavae import sharding, train  # pylint: disable=g-import-not-at-top
  config = _config(res, dtype, kind, batch)
  mesh = sharding.make_mesh(config)
  model = train.create_model(config)
  tx, schedule = train.make_optimizer(config)
  init_fn = train.make_init_fn(model, tx, config)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  step_fn = jax.jit(train.make_train_step(model, tx, schedule, config),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    donate_argnums=(0,))
  batch_np = np.random.default_rng(0).uniform(
      -1, 1, (batch, res, res, 3)).astype(np.float32)
  x = jax.device_put(batch_np, sharding.batch_sharding(mesh))
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, x).compile()
  compile_s = time.perf_counter() - t0
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    pass
  holder = {'state': state}

  def one():
    holder['state'], m = compiled(holder['state'], x)
    return m['loss']
  for _ in range(2):  # warm-up
    one()
  median, _ = _time(one, steps)
  return {'median_s': median, 'compile_s': compile_s, 'flops': flops,
          'state': holder['state'], 'model': model, 'x': x}


def measure_reconstruct(model, state, x, steps):
  from pcavae import train  # pylint: disable=g-import-not-at-top
  fn = jax.jit(train.make_reconstruct_fn(model))
  variables = {'params': state['params'], **train.collections_of(state)}
  fn(variables, x).block_until_ready()
  median, _ = _time(lambda: fn(variables, x), steps)
  return median


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='64')
  p.add_argument('--dtypes', default='float32')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--kinds', default='pca,vq,identity')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='Peak dense TFLOP/s of the chip for MFU (e.g. 989 for '
                 'an H100 SXM in bf16); 0 skips MFU.')
  p.add_argument('--out', default='out/throughput')
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  from pcavae.models import bottlenecks  # pylint: disable=g-import-not-at-top
  kinds = [k for k in args.kinds.split(',') if k in bottlenecks.names()]
  device = jax.devices()[0]
  records = []

  def emit(rec):
    rec = dict(rec, device=device.device_kind, platform=device.platform,
               num_devices=jax.device_count(), jax=jax.__version__)
    records.append(rec)
    line = json.dumps(rec)
    print(line, flush=True)
    with open(os.path.join(args.out, 'throughput.jsonl'), 'a') as f:
      f.write(line + '\n')

  for res in [int(s) for s in args.sizes.split(',')]:
    for dtype in args.dtypes.split(','):
      times = {}
      for kind in kinds:
        r = measure_train(res, dtype, kind, args.batch, args.steps)
        times[kind] = r['median_s']
        rec = {'measurement': f'train/{kind}', 'resolution': res,
               'dtype': dtype, 'batch': args.batch,
               'step_ms': 1e3 * r['median_s'],
               'images_per_s': args.batch / r['median_s'],
               'compile_s': r['compile_s'], 'flops_per_step': r['flops']}
        if r['flops'] and args.peak_tflops:
          rec['mfu'] = r['flops'] / r['median_s'] / (args.peak_tflops * 1e12)
        emit(rec)
        if kind == 'pca':
          rt = measure_reconstruct(r['model'], r['state'], r['x'], args.steps)
          emit({'measurement': 'reconstruct', 'resolution': res,
                'dtype': dtype, 'batch': args.batch, 'step_ms': 1e3 * rt,
                'images_per_s': args.batch / rt})
        del r
      if 'identity' in times:
        for kind in kinds:
          if kind != 'identity':
            emit({'measurement': f'bottleneck_share/{kind}', 'resolution': res,
                  'dtype': dtype,
                  'share': (times[kind] - times['identity']) / times[kind]})
      emit({'measurement': 'memory', 'resolution': res, 'dtype': dtype,
            'peak_bytes': _peak_memory_bytes()})

  lines = ['| measurement | res | dtype | step ms | images/s | compile s | '
           'share / MFU |', '|---|---|---|---|---|---|---|']
  for r in records:
    if 'step_ms' in r:
      lines.append(
          f"| {r['measurement']} | {r['resolution']} | {r['dtype']} | "
          f"{r['step_ms']:.1f} | {r['images_per_s']:.1f} | "
          f"{r.get('compile_s', float('nan')):.1f} | "
          f"{r.get('mfu', '')} |")
    elif 'share' in r:
      lines.append(f"| {r['measurement']} | {r['resolution']} | {r['dtype']} "
                   f"| | | | {100 * r['share']:+.1f}% of the step |")
    elif 'peak_bytes' in r:
      lines.append(f"| {r['measurement']} | {r['resolution']} | {r['dtype']} "
                   f"| | | | peak {r['peak_bytes'] / 2**20:.0f} MiB |")
  table = '\n'.join(lines)
  with open(os.path.join(args.out, 'throughput.md'), 'w') as f:
    f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  sys.exit(main())
