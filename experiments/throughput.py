r"""Train-step and reconstruction throughput of the PCA-VAE and the bottleneck's
share of the step.

  python experiments/throughput.py --out=out/throughput            # CPU, 64 px
  python experiments/throughput.py --sizes=64,256 --dtypes=float32,bfloat16 \
    --out=out/throughput_gpu                                        # a GPU
  python experiments/throughput.py --kinds=pca:sanger,pca:reference,identity

A kind may carry options after colons: the PCA tracker (`pca:sanger`, the
default of configs/pcavae.py, `pca:reference`, `pca:subspace`), a conv
algorithm (`identity:direct`) and, on several devices, `pca:replicated`.

For each (resolution, compute dtype) it builds the `spatial16` setting of
configs/pcavae.py (channels 128, 256; D = 256; 16x16 latent at 64 px) with
batch 16 and times, each as the median of `--steps` calls after compilation:

  train/<bottleneck>   one jitted, donated train step (forward, backward, Adam,
                       the bottleneck's own update) with the PCA bottleneck
                       (Q = 256, tracker per kind), `vq` with K = 8192
                       (when registered), and the
                       identity, at the same latent shape: the bottleneck's
                       share of the step is (t_kind - t_identity) / t_kind.
                       The kinds are compiled first and then timed in
                       `--rounds` interleaved rounds of `--steps / --rounds`
                       steps each, so that a machine whose load changes
                       (other jobs) affects them alike; each record also has
                       the process CPU time per step and the load average;
  pca_maintenance      what the median step leaves out: the scheduled
                       re-orthonormalisation (every Q updates, by the
                       configured `orthonormalization`) and the drift
                       check (every `orthonormality_check_every` updates),
                       timed alone and amortised per step;
  reconstruct          the jitted eval-mode forward pass;
  compile              compile time of the train step;
  memory               peak device memory (GPU/TPU) or the process's peak RSS
                       (CPU); with `--train_only` (no reconstruction or
                       maintenance programs) that of the train steps alone.

The process first applies `pcavae.sharding.tune_host_allocator()` and
`pcavae.sharding.default_xla_flags()` (as `pcavae.main` does), so the numbers
are those of a training run.

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


def _config(res: int, dtype: str, spec: str, batch: int):
  """`spec` is a bottleneck kind, optionally followed by `:`-separated
  options: a PCA tracker (`pca:sanger`, the default, `pca:reference`, the
  OPCA-VAE rule as configs/pcavae.py's `reference` flag sets it, or
  `pca:subspace`), a conv algorithm (`config.model.conv_algorithm`: `direct`,
  `winograd`, `auto`), `replicated` (a spatial PCA's state replicated
  over the devices, `config.mesh.pca_locations=False`) and/or `q<N>` (Q = N
  components instead of the setting's 256, e.g. `pca:q51`, the CelebA-HQ
  setting's 20%)."""
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  from pcavae.models import bottlenecks  # pylint: disable=g-import-not-at-top
  kind, *options = spec.split(':')
  arg = ':setting=spatial16' + (',reference' if 'reference' in options
                                else '')
  c = configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') + arg)
  c.resolution = res
  c.batch_size = batch
  c.compute_dtype = dtype
  for option in options:
    if option == 'replicated':
      c.mesh.pca_locations = False
    elif option[:1] == 'q' and option[1:].isdigit():
      if kind != 'pca':
        raise ValueError(f'{spec!r}: `q<N>` is an option of `pca` only.')
      c.model.bottleneck.num_components = int(option[1:])
    elif option in bottlenecks.PCA_TRACKERS:
      if kind != 'pca':
        raise ValueError(f'{spec!r}: a tracker is an option of `pca` only.')
      c.model.bottleneck.tracker = option
    else:
      c.model.conv_algorithm = option
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


def step_flops(lowered):
  """FLOPs of one call of a lowered program, by XLA's cost analysis of the
  program before backend compilation. The compiled program's analysis is no
  use on a GPU: there the convolutions become cuDNN custom calls, which it
  counts as nothing (an MFU of 0.2% for the 256 px step on an H200)."""
  try:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def build_train(res, dtype, kind, batch):
  """Compiles one bottleneck's train step; returns a step closure and info."""
  from pcavae import sharding, train  # pylint: disable=g-import-not-at-top
  config = _config(res, dtype, kind, batch)
  mesh = sharding.make_mesh(config)
  built = train.new_training(config, mesh, jax.random.PRNGKey(0))
  model, state, step_fn = built['model'], built['state'], built['train_step']
  batch_np = np.random.default_rng(0).uniform(
      -1, 1, (batch, res, res, 3)).astype(np.float32)
  x = jax.device_put(batch_np, sharding.batch_sharding(mesh))
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, x)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = step_flops(lowered)
  holder = {'state': state}

  def one():
    holder['state'], m = compiled(holder['state'], x)
    return m['loss']
  for _ in range(2):  # warm-up
    jax.block_until_ready(one())
  return {'step': one, 'compile_s': compile_s, 'flops': flops,
          'pca_split_by_location':
              sharding.location_sharding(config, mesh) is not None,
          'holder': holder, 'model': model, 'x': x, 'config': config}


def time_interleaved(steps_of: dict, steps: int, rounds: int):
  """Runs the step closures in alternating rounds; per-step wall and CPU."""
  per_round = max(1, steps // max(1, rounds))
  wall = {k: [] for k in steps_of}
  cpu = {k: [] for k in steps_of}
  names = list(steps_of)
  for r in range(max(1, rounds)):
    for k in (names if r % 2 == 0 else names[::-1]):
      for _ in range(per_round):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(steps_of[k]())
        wall[k].append(time.perf_counter() - t0)
        cpu[k].append(time.process_time() - c0)
  return wall, cpu


def _find_key(tree, key):
  """The first value stored under `key` in a nested dict, or None."""
  if isinstance(tree, dict):
    if key in tree:
      return tree[key]
    for v in tree.values():
      found = _find_key(v, key)
      if found is not None:
        return found
  return None


def measure_pca_maintenance(config, basis, steps: int):
  """Seconds of one re-orthonormalisation and one drift check, and their
  cost amortised per train step."""
  from pcavae.models import pca  # pylint: disable=g-import-not-at-top
  b = config.model.bottleneck
  every = b.get('orthonormalize_every') or b.num_components
  check_every = b.get('orthonormality_check_every', 16)
  orth = jax.jit(pca.orthonormalize_qr
                 if b.get('orthonormalization') == 'qr'
                 else pca.orthonormalize)
  check = jax.jit(pca.orthonormality_error)
  jax.block_until_ready((orth(basis), check(basis)))
  n = max(1, min(3, steps // 4))
  t_orth, _ = _time(lambda: orth(basis), n)
  t_check, _ = _time(lambda: check(basis), n)
  return {'orthonormalize_s': t_orth, 'orthonormalize_every': every,
          'check_s': t_check, 'check_every': check_every,
          # every == 1: the step itself re-orthonormalises (in the median),
          # and the drift check never runs between scheduled ones.
          'amortized_ms_per_step':
              0.0 if every == 1 else
              1e3 * (t_orth / every + t_check / check_every)}


def measure_reconstruct(model, state, x, steps):
  from pcavae import train, train_state  # pylint: disable=g-import-not-at-top
  fn = jax.jit(train.make_reconstruct_fn(model))
  variables = train_state.variables_of(state)
  fn(variables, x).block_until_ready()
  median, _ = _time(lambda: fn(variables, x), steps)
  return median


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='64')
  p.add_argument('--dtypes', default='float32')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=20,
                 help='Timed steps per bottleneck (after 2 warm-up steps).')
  p.add_argument('--rounds', type=int, default=5,
                 help='Interleave the bottlenecks in this many rounds.')
  p.add_argument('--kinds', default='pca,vq,identity',
                 help='Bottleneck kinds; `kind:direct` or `kind:winograd` '
                 'sets config.model.conv_algorithm for that entry, '
                 '`pca:replicated` replicates the PCA state over the '
                 'devices instead of splitting it by location, '
                 '`pca:sanger` (the default), `pca:reference` (the OPCA-VAE '
                 'rule) or `pca:subspace` chooses the PCA tracker, '
                 '`pca:q51` the number of components.')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='Peak dense TFLOP/s of the chip for MFU (e.g. 989 for '
                 'an H100 SXM in bf16); 0 skips MFU.')
  p.add_argument('--train_only', action='store_true',
                 help='Time the train steps only (no eval-mode reconstruction '
                 'or standalone PCA maintenance): the peak memory is then '
                 "the train step's.")
  p.add_argument('--out', default='out/throughput')
  args = p.parse_args(argv)
  from pcavae import sharding  # pylint: disable=g-import-not-at-top
  sharding.tune_host_allocator()  # before JAX allocates, as pcavae.main
  sharding.default_xla_flags()    # before JAX starts its CPU backend
  os.makedirs(args.out, exist_ok=True)
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae.models import bottlenecks  # pylint: disable=g-import-not-at-top
  kinds = [k for k in args.kinds.split(',')
           if k.partition(':')[0] in bottlenecks.names()]
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
      built = {}
      for kind in kinds:   # a record per compiled step, as it is compiled
        built[kind] = build_train(res, dtype, kind, args.batch)
        emit({'measurement': f'compile/{kind}', 'resolution': res,
              'dtype': dtype, 'batch': args.batch,
              'compile_s': built[kind]['compile_s']})
      load0 = os.getloadavg()
      wall, cpu = time_interleaved({k: b['step'] for k, b in built.items()},
                                   args.steps, args.rounds)
      load1 = os.getloadavg()
      times = {}
      for kind, r in built.items():
        med = statistics.median(wall[kind])
        times[kind] = med
        rec = {'measurement': f'train/{kind}', 'resolution': res,
               'winograd': train.uses_winograd(r['config']),
               'pca_split_by_location': r['pca_split_by_location'],
               'dtype': dtype, 'batch': args.batch,
               'step_ms': 1e3 * med, 'images_per_s': args.batch / med,
               'step_ms_min': 1e3 * min(wall[kind]),
               'cpu_ms_per_step': 1e3 * statistics.median(cpu[kind]),
               'steps_timed': len(wall[kind]),
               'load_avg_1min': [round(load0[0], 2), round(load1[0], 2)],
               'compile_s': r['compile_s'], 'flops_per_step': r['flops']}
        if r['flops'] and args.peak_tflops:
          rec['mfu'] = r['flops'] / med / (args.peak_tflops * 1e12)
        emit(rec)
      if 'pca' in built and not args.train_only:
        r = built['pca']
        rt = measure_reconstruct(r['model'], r['holder']['state'], r['x'],
                                 args.steps)
        emit({'measurement': 'reconstruct', 'resolution': res,
              'dtype': dtype, 'batch': args.batch, 'step_ms': 1e3 * rt,
              'images_per_s': args.batch / rt})
        basis = _find_key(r['holder']['state'].get('pca', {}), 'basis')
        if basis is not None:
          m = measure_pca_maintenance(r['config'], basis, args.steps)
          emit(dict({'measurement': 'pca_maintenance', 'resolution': res,
                     'dtype': dtype}, **m))
      for kind in kinds:
        # Against the identity with the same conv algorithm.
        name, *options = kind.split(':')
        base = ':'.join(['identity'] + [
            o for o in options
            if o != 'replicated' and o not in bottlenecks.PCA_TRACKERS
            and not (o[:1] == 'q' and o[1:].isdigit())])
        if name != 'identity' and base in times:
          emit({'measurement': f'bottleneck_share/{kind}', 'resolution': res,
                'dtype': dtype,
                'share': (times[kind] - times[base]) / times[kind],
                'cpu_share': ((statistics.median(cpu[kind])
                               - statistics.median(cpu[base]))
                              / statistics.median(cpu[kind]))})
      del built
      emit({'measurement': 'memory', 'resolution': res, 'dtype': dtype,
            'peak_bytes': _peak_memory_bytes()})

  lines = ['| measurement | res | dtype | step ms (median) | images/s | '
           'CPU ms / step | compile s | share / MFU / notes |',
           '|---|---|---|---|---|---|---|---|']
  for r in records:
    if 'step_ms' in r:
      notes = [f"MFU {100 * r['mfu']:.1f}%"] if 'mfu' in r else []
      if 'load_avg_1min' in r:
        notes.append(
            f"load avg {r['load_avg_1min'][0]}-{r['load_avg_1min'][1]}")
      notes = '; '.join(notes)
      cpu_ms = r.get('cpu_ms_per_step')
      lines.append(
          f"| {r['measurement']} | {r['resolution']} | {r['dtype']} | "
          f"{r['step_ms']:.1f} | {r['images_per_s']:.2f} | "
          f"{'' if cpu_ms is None else f'{cpu_ms:.0f}'} | "
          f"{r.get('compile_s', float('nan')):.1f} | {notes} |")
    elif 'share' in r:
      lines.append(f"| {r['measurement']} | {r['resolution']} | {r['dtype']} "
                   f"| | | | | {100 * r['share']:+.1f}% of the step "
                   f"(CPU time: {100 * r['cpu_share']:+.1f}%) |")
    elif 'amortized_ms_per_step' in r:
      lines.append(
          f"| {r['measurement']} | {r['resolution']} | {r['dtype']} | | | | | "
          f"orthonormalize {r['orthonormalize_s']:.2f} s every "
          f"{r['orthonormalize_every']}, check {1e3 * r['check_s']:.0f} ms "
          f"every {r['check_every']}: "
          f"{r['amortized_ms_per_step']:.1f} ms/step amortised |")
    elif 'peak_bytes' in r:
      lines.append(f"| {r['measurement']} | {r['resolution']} | {r['dtype']} "
                   f"| | | | | peak {r['peak_bytes'] / 2**20:.0f} MiB |")
  table = '\n'.join(lines)
  with open(os.path.join(args.out, 'throughput.md'), 'w') as f:
    f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  sys.exit(main())
