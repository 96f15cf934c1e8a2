r"""One check of pcavae on an accelerator: exactness, compile time, speed, host load.

  python experiments/gpu_check.py --out=out/gpu_check               # a GPU, ~8 min
  python experiments/gpu_check.py --quick --out=out/gpu_check_quick # CPU, tiny

Needs no download and no torch. Each part runs as its own process under a
time limit (the whole check under `--budget_s`), and the report is rewritten
after every part, so a part that hangs or fails costs only itself:

  tests       tests/test_pca.py, test_pca_fidelity.py and test_precision.py at
              the backend's default matmul precision (TF32 on recent GPUs);
  train       `python -m pcavae.main --config=configs/pcavae.py:runlocal`
              (`make run`'s job) twice: with an empty compilation cache, and
              again with the cache it left (a restart); with `--variants=malloc`
              also with an empty cache and the CPU malloc tuning forced
              (`PCAVAE_MALLOC_TUNING=1`). Each
              reports wall time, the first step's latency, steps/s, the input
              wait fraction, the PCA fidelity figures, and the process's CPU
              time (user, system) with the threads that used most of it;
  throughput  experiments/throughput.py for the `spatial16` setting (16x16x256
              latent, Q = 256): batch 16 float32 and batch 256 bfloat16 at
              64 px, and batch 32 bfloat16 at 256 px with MFU against
              `--peak_tflops`; `pca` beside `identity`, so the PCA's share of
              the step shows; compile time per program and peak device memory.
              With `--variants=autotune0`, on a GPU, the batch-16 step is
              compiled again with XLA's autotuning off
              (`--xla_gpu_autotune_level=0`) for its compile time and speed;
  profile     experiments/pca_profile.py: each part of the PCA's step
              (Sanger step, Gram, Cholesky inverse, Cholesky-QR, symmetric
              orthonormalisation, the projection's products) timed alone at
              the spatial16 shape;
  reference   optional: `--reference_cmd` is run before and after the
              throughput parts; it must print JSON lines with `program`,
              `what` (`train` | `reconstruct`), `batch` and `images_per_s` (a
              side-by-side run of another implementation, each at its own
              defaults).

`--quick` shrinks every part to seconds on a CPU (what CI runs): three tests,
a 4-step tiny training run (cold and warm cache), the `pca` throughput step
at 16 px and batch 2.

Writes `<out>/report.md` (the tables) and `<out>/report.json` (every record).
"""

import argparse
import collections
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/pcavae.py:runlocal'
TINY_TRAIN = [
    '--config.resolution=16', '--config.model.channels=(8,16)',
    '--config.model.latent_dim=8', '--config.model.num_res_layers=1',
    '--config.model.bottleneck.num_components=4', '--config.batch_size=4',
    '--config.eval.batch_size=4', '--config.eval.num_examples=8',
    '--config.eval.spectra_num_images=16', '--config.num_train_steps=4',
    '--config.log_every_steps=2', '--config.tensorboard=False']
PCA_TESTS = ['tests/test_pca.py', 'tests/test_pca_fidelity.py',
             'tests/test_precision.py']
FIDELITY_KEYS = ('pca/captured_variance', 'pca/order_spearman',
                 'pca/orthonormality_error', 'eval/psnr')


def _thread_cpu(pid: int) -> dict:
  """CPU seconds (user + system) of each live thread of `pid`, by tid."""
  out = {}
  tick = os.sysconf('SC_CLK_TCK')
  try:
    tids = os.listdir(f'/proc/{pid}/task')
  except OSError:
    return out
  for tid in tids:
    try:
      with open(f'/proc/{pid}/task/{tid}/stat') as f:
        stat = f.read()
    except OSError:
      continue
    name = stat[stat.index('(') + 1:stat.rindex(')')]
    fields = stat[stat.rindex(')') + 2:].split()
    out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
  return out


def _thread_group(name: str) -> str:
  """Groups numbered thread names (`tf_pjrt-7` -> `tf_pjrt-*`)."""
  return name.rstrip('0123456789').rstrip('-_:') + '*' if (
      name and name[-1].isdigit()) else name


def run_process(cmd, timeout_s: float, env=None, sample_threads=False):
  """Runs `cmd`; returns rc, wall, user/system CPU of it and its children,
  its output, and (optionally) CPU seconds by thread-name group."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout),
                            daemon=True)
  reader.start()
  threads = {}
  rc, usage, timed_out = None, None, False
  while True:
    if sample_threads:
      threads.update(_thread_cpu(proc.pid))
    done_pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if done_pid:
      rc = os.waitstatus_to_exitcode(status)
      break
    if time.perf_counter() - t0 > timeout_s:
      proc.kill()
      _, status, usage = os.wait4(proc.pid, 0)
      rc, timed_out = -9, True
      break
    time.sleep(0.25)
  proc.returncode = rc
  reader.join(timeout=5)
  groups = collections.Counter()
  for name, seconds in threads.values():
    groups[_thread_group(name)] += seconds
  return {'cmd': ' '.join(shlex.quote(c) for c in cmd), 'rc': rc,
          'timed_out': timed_out, 'wall_s': time.perf_counter() - t0,
          'user_s': usage.ru_utime, 'system_s': usage.ru_stime,
          'threads': dict(groups.most_common(6)), 'output': ''.join(lines)}


class Check:
  """The parts, their records, and the report rewritten after each part."""

  def __init__(self, args):
    self.args = args
    self.variants = set(filter(None, args.variants.split(',')))
    self.t0 = time.perf_counter()
    self.sections = []            # (title, markdown)
    self.records = {}
    os.makedirs(args.out, exist_ok=True)

  def left(self, want: float) -> float:
    return max(0.0, min(want, self.args.budget_s
                        - (time.perf_counter() - self.t0)))

  def env(self, **extra) -> dict:
    env = dict(os.environ, **extra)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env

  def add(self, key, title, markdown, record):
    self.records[key] = record
    self.sections.append((title, markdown))
    self.write()

  def write(self):
    head = [f'# pcavae GPU check ({"quick, " if self.args.quick else ""}'
            f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})', '',
            f'Total wall time so far: {time.perf_counter() - self.t0:.0f} s.',
            '']
    body = []
    for title, markdown in self.sections:
      body += [f'## {title}', '', markdown.rstrip(), '']
    with open(os.path.join(self.args.out, 'report.md'), 'w') as f:
      f.write('\n'.join(head + body))
    with open(os.path.join(self.args.out, 'report.json'), 'w') as f:
      json.dump(self.records, f, indent=1, default=str)

  def failures(self) -> list:
    """Keys of the processes that failed or timed out."""
    found = []

    def visit(key, rec):
      if isinstance(rec, dict) and 'rc' in rec:
        if rec['rc'] not in (0, None):
          found.append(key)
      elif isinstance(rec, dict):
        for k, v in rec.items():
          visit(f'{key}/{k}', v)
    for key, rec in self.records.items():
      visit(key, rec)
    return found

  def run(self, key, cmd, want_s, **kw):
    budget = self.left(want_s)
    if budget < 5:
      return {'cmd': ' '.join(cmd), 'rc': None, 'skipped': 'out of budget',
              'output': ''}
    res = run_process(cmd, budget, **kw)
    with open(os.path.join(self.args.out, f'{key}.log'), 'w') as f:
      f.write(res['cmd'] + '\n' + res['output'])
    return res


def _status(res) -> str:
  if res.get('skipped'):
    return f"skipped ({res['skipped']})"
  if res['timed_out']:
    return f"**timed out** after {res['wall_s']:.0f} s"
  return 'ok' if res['rc'] == 0 else f"**failed** (exit {res['rc']})"


def part_environment(check):
  code = ('import jax, jaxlib, json, platform, flax, optax;'
          'd = jax.devices()[0];'
          'print(json.dumps(dict(jax=jax.__version__, jaxlib=jaxlib.__version__,'
          ' flax=flax.__version__, optax=optax.__version__,'
          ' python=platform.python_version(), platform=d.platform,'
          ' device=d.device_kind, devices=jax.device_count())))')
  res = check.run('environment', [sys.executable, '-c', code], 120,
                  env=check.env())
  info = {'host_cpus': os.cpu_count(), 'host': platform.machine()}
  for line in res['output'].splitlines():
    if line.startswith('{'):
      info.update(json.loads(line))
  table = '\n'.join(f'- {k}: {v}' for k, v in info.items())
  check.add('environment', 'Environment', table, info)
  return info


def part_tests(check):
  files = PCA_TESTS[2:] if check.args.quick else PCA_TESTS
  cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:xdist',
         '-p', 'no:cacheprovider'] + files
  if check.args.quick:
    cmd += ['-k', 'every_matmul or orthonormalize_qr or spatial-sanger-qr']
  res = check.run('tests', cmd, 240, env=check.env())
  summary = [l for l in res['output'].splitlines()
             if ' passed' in l or ' failed' in l or ' error' in l]
  failed = [l for l in res['output'].splitlines() if l.startswith('FAILED')]
  md = (f"`{' '.join(cmd[1:])}` at the backend's default matmul precision: "
        f"{_status(res)}, {summary[-1] if summary else 'no summary line'} "
        f"({res.get('wall_s', 0):.0f} s).")
  if failed:
    md += '\n\n' + '\n'.join(f'- {l}' for l in failed[:20])
  check.add('tests', 'PCA tests at the default precision', md,
            dict(res, output=res['output'][-4000:], summary=summary,
                 failed=failed))


def _metrics(workdir):
  """The first-step latency, last train log and last eval of a run."""
  rows = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(l) for l in f if l.strip()]
  out = {}
  for row in rows:
    for k, v in row.items():
      if k == 'first_step_seconds' or k in FIDELITY_KEYS or k in (
          'steps_per_sec', 'input_wait_fraction'):
        out[k] = v
  return out


def part_train(check):
  runs = [('cold', {}, 'empty compilation cache'),
          ('malloc', {'PCAVAE_MALLOC_TUNING': '1'},
           'empty cache, CPU malloc tuning forced'),
          ('warm', {}, "the cold run's cache (a restart)")]
  rows, records = [], {}
  extra = TINY_TRAIN if check.args.quick else []
  if 'malloc' not in check.variants:
    runs = [r for r in runs if r[0] != 'malloc']
  for name, env_extra, what in runs:
    cache = os.path.join(check.args.out, 'jax_cache_' + (
        'malloc' if name == 'malloc' else 'default'))
    workdir = os.path.join(check.args.out, f'train_{name}')
    cmd = [sys.executable, '-m', 'pcavae.main', f'--config={CONFIG}',
           f'--workdir={workdir}', '--config_mismatch=allow'] + extra
    res = check.run(f'train_{name}', cmd, 150, sample_threads=True,
                    env=check.env(JAX_COMPILATION_CACHE_DIR=cache,
                                  PCAVAE_COMPILATION_CACHE='1', **env_extra))
    m = _metrics(workdir)
    found = re.search(r'(\d+) programs loaded, (\d+) compiled',
                      res['output'])
    cache_counts = (int(found[1]), int(found[2])) if found else None
    records[name] = dict(res, output=res['output'][-3000:], metrics=m,
                         programs_loaded_compiled=cache_counts)
    cpu = res.get('user_s', 0) + res.get('system_s', 0)
    threads = ', '.join(f'{k} {v:.0f} s' for k, v in
                        res.get('threads', {}).items())
    rows.append(
        f"| {name}: {what} | {_status(res)} | {res.get('wall_s', 0):.0f} | "
        f"{m.get('first_step_seconds', float('nan')):.1f} | "
        f"{m.get('steps_per_sec', float('nan')):.0f} | "
        f"{m.get('input_wait_fraction', float('nan')):.3f} | "
        f"{res.get('user_s', 0):.0f} / {res.get('system_s', 0):.0f} | "
        f"{cpu / max(res.get('wall_s', 1), 1e-9):.1f} | "
        f"{m.get('pca/captured_variance', float('nan')):.3f} | "
        f"{m.get('pca/order_spearman', float('nan')):.2f} | "
        f"{m.get('pca/orthonormality_error', float('nan')):.1e} | "
        f"{'%d / %d' % cache_counts if cache_counts else ''} | "
        f"{threads} |")
  md = (f"`python -m pcavae.main --config={CONFIG}`"
        f"{' (tiny overrides)' if extra else ''}:\n\n"
        '| run | status | wall s | first step s | steps/s (last log) | '
        'input wait | CPU user / sys s | cores busy | captured var | rho | '
        'orthonormality error | programs loaded / compiled | '
        'threads by CPU s |\n'
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
        + '\n'.join(rows))
  check.add('train', 'Training run of the default config (make run)', md,
            records)


def _throughput(check, key, args, want_s, env_extra=None):
  out = os.path.join(check.args.out, key)
  kinds = [] if any(a.startswith('--kinds') for a in args) else [
      '--kinds=pca,identity']
  cmd = [sys.executable, 'experiments/throughput.py', '--train_only',
         f'--out={out}'] + kinds + args
  res = check.run(key, cmd, want_s,
                  env=check.env(PCAVAE_COMPILATION_CACHE='0',
                                **(env_extra or {})))
  recs = []
  for line in res['output'].splitlines():
    if line.startswith('{'):
      try:
        recs.append(json.loads(line))
      except ValueError:
        pass
  return res, recs


def part_throughput(check, info):
  gpu = info.get('platform') == 'gpu'
  if check.args.quick:
    configs = [('tp_quick', ['--sizes=16', '--batch=2', '--dtypes=float32',
                             '--steps=2', '--rounds=1', '--kinds=pca'], {})]
  else:
    steps = ['--steps=30', '--rounds=3', f'--peak_tflops={check.args.peak_tflops}']
    configs = [('tp_b16_f32', ['--sizes=64', '--batch=16',
                               '--dtypes=float32'] + steps, {})]
    if gpu and 'autotune0' in check.variants:
      configs.append(('tp_b16_f32_autotune0', configs[0][1],
                      {'XLA_FLAGS': '--xla_gpu_autotune_level=0'}))
    configs += [('tp_b256_bf16', ['--sizes=64', '--batch=256',
                                  '--dtypes=bfloat16'] + steps, {}),
                ('tp_256px_bf16', ['--sizes=256', '--batch=32',
                                   '--dtypes=bfloat16'] + steps, {})]
  rows, records = [], {}
  fallback = None   # env of the autotune-off variant, if only it compiled
  for key, args, env_extra in configs:
    if fallback is not None and not env_extra:
      env_extra, key = fallback, key + '_autotune0'
    res, recs = _throughput(check, key, args, 130, env_extra)
    if key == 'tp_b16_f32_autotune0' and recs and not records.get(
        'tp_b16_f32', {}).get('records'):
      fallback = env_extra   # the default compile did not finish in time
    records[key] = dict(res, output=res['output'][-3000:], records=recs)
    label = key + (' (XLA_FLAGS=' + env_extra['XLA_FLAGS'] + ')'
                   if env_extra else '')
    if not recs:
      rows.append(f'| {label} | {_status(res)} | | | | | | | |')
    compile_s = {r['measurement'][8:]: r['compile_s'] for r in recs
                 if r['measurement'].startswith('compile/')}
    share = {r['measurement'].split('/', 1)[1]: r['share'] for r in recs
             if r['measurement'].startswith('bottleneck_share/')}
    memory = [r['peak_bytes'] for r in recs if r['measurement'] == 'memory']
    for r in recs:
      if not r['measurement'].startswith('train/'):
        continue
      kind = r['measurement'][6:]
      mfu = f"{100 * r['mfu']:.1f}%" if 'mfu' in r else ''
      rows.append(
          f"| {label} | {kind} | {r['resolution']} | {r['batch']} | "
          f"{r['dtype']} | {r['step_ms']:.2f} | {r['images_per_s']:.0f} | "
          f"{compile_s.get(kind, float('nan')):.1f} | "
          f"{'' if kind not in share else f'{100 * share[kind]:+.1f}%'} | "
          f"{mfu} | {memory[0] / 2**30 if memory else float('nan'):.2f} |")
  md = ('`python experiments/throughput.py --train_only --kinds=pca,identity '
        '...` (the `spatial16` setting; median step after compilation, the '
        'kinds interleaved):\n\n'
        '| part | bottleneck | px | batch | dtype | step ms | images/s | '
        'compile s | PCA share | MFU | peak GiB |\n'
        '|---|---|---|---|---|---|---|---|---|---|---|\n' + '\n'.join(rows))
  check.add('throughput', 'Train-step throughput', md, records)
  return records


def part_reference(check, when):
  if not check.args.reference_cmd:
    return None
  cmd = shlex.split(check.args.reference_cmd)
  res = check.run(f'reference_{when}', cmd, 120, env=check.env())
  recs = [json.loads(l) for l in res['output'].splitlines()
          if l.startswith('{')]
  rows = [f"| {when} | {r['what']} | {r['batch']} | "
          f"{r['images_per_s']:.0f} |" for r in recs]
  md = (f"`{check.args.reference_cmd}`: {_status(res)}\n\n"
        '| when | what | batch | images/s |\n|---|---|---|---|\n'
        + '\n'.join(rows))
  check.add(f'reference_{when}', f'Reference program ({when} pcavae)', md,
            dict(res, output=res['output'][-3000:], records=recs))
  return recs


def part_profile(check):
  """experiments/pca_profile.py: each part of the PCA's step timed alone."""
  out = os.path.join(check.args.out, 'pca_profile')
  cmd = [sys.executable, 'experiments/pca_profile.py', f'--out={out}'] + (
      ['--quick'] if check.args.quick else [])
  res = check.run('pca_profile', cmd, 150,
                  env=check.env(PCAVAE_COMPILATION_CACHE='0'))
  table = os.path.join(out, 'pca_profile.md')
  md = f"`{' '.join(cmd[1:])}`: {_status(res)}\n\n"
  if os.path.exists(table):
    with open(table) as f:
      md += f.read()
  check.add('pca_profile', "The PCA step's parts, timed alone", md,
            dict(res, output=res['output'][-3000:]))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='out/gpu_check')
  p.add_argument('--quick', action='store_true',
                 help='Tiny settings that finish in minutes on a CPU.')
  p.add_argument('--budget_s', type=float, default=480.0,
                 help='Wall-clock budget of the whole check; parts left '
                 'when it is spent are skipped.')
  p.add_argument('--peak_tflops', type=float, default=989.0,
                 help="The chip's dense bf16 peak for MFU (989: H100/H200 "
                 'SXM).')
  p.add_argument('--reference_cmd', default='',
                 help='A command timing another implementation (see the '
                 'module docstring).')
  p.add_argument('--variants', default='',
                 help='Comma-separated extra runs: `malloc` (the training '
                 'run again with PCAVAE_MALLOC_TUNING=1) and `autotune0` '
                 '(the batch-16 step with XLA autotuning off, on a GPU).')
  p.add_argument('--parts', default='tests,train,throughput,profile',
                 help='Comma-separated subset of tests, train, throughput, '
                 'profile, run in that order.')
  args = p.parse_args(argv)
  check = Check(args)
  info = part_environment(check)
  for part in args.parts.split(','):
    if part == 'tests':
      part_tests(check)
    elif part == 'train':
      part_train(check)
    elif part == 'throughput':
      part_reference(check, 'before')
      part_throughput(check, info)
      part_reference(check, 'after')
    elif part == 'profile':
      part_profile(check)
    else:
      raise SystemExit(f'--parts: unknown part {part!r}; choose from tests, '
                       'train, throughput, profile.')
  check.write()
  print(open(os.path.join(args.out, 'report.md')).read())
  return 1 if check.failures() else 0


if __name__ == '__main__':
  sys.exit(main())
