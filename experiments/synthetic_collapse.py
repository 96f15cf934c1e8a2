r"""Dimensional collapse of VQ on Gaussian data, and two remedies.

A linear autoencoder `x -> W_e x -> bottleneck -> W_d z` on zero-mean
Gaussian data whose covariance has a power-law spectrum
`lambda_i ~ i^-decay` (i = 1..dim, randomly rotated, mean variance 1) is
trained three ways, for the same number of steps:

  vq          VQ-VAE (`bottlenecks.VQBottleneck`, K codes) from the start;
  vq_warmup   the identity for `--warmup_steps`, then VQ with its codebook
              initialised by k-means on the latents (`pcavae.warmup`, the
              trainer's own switch);
  pca         the online PCA bottleneck (`bottlenecks.PCABottleneck`,
              `shared` mode, Q components).

Reported at the end, on a fixed held-out set: the reconstruction MSE
relative to the data variance; the 99%-variance dimension
(`analysis.explained_variance_dim`) of the encoder output z_e, of the
bottleneck output z_q and of the codebook (all codes and the used ones);
and the reverse water-filling prediction (`analysis.waterfilling_dim`) of
the dimension a K-code codebook should use at R = log2 K bits, computed on
the data spectrum and on each run's own latent spectrum, with the Gaussian
rate-distortion bound on the MSE at that rate (no K-code quantizer of one
vector can beat it). The dimensions are also tracked during training.

Outputs in `--out` (default workdirs/synthetic_collapse): `results.md`,
`results.json`, `synthetic_collapse.png`.

  python experiments/synthetic_collapse.py            # ~2-4 min on 2 cores
  python experiments/synthetic_collapse.py --quick    # well under a minute
  python experiments/synthetic_collapse.py --dim=64 --decay=1.5 --k=1024
"""

import json
import os
import time
from typing import Any, Dict

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pcavae import analysis
from pcavae import configlib
from pcavae import harness
from pcavae import viz
from pcavae import warmup
from pcavae.models import autoencoder
from pcavae.models import bottlenecks

_OUT = flags.DEFINE_string('out', os.path.join(harness.WORKDIRS,
                                               'synthetic_collapse'),
                           'Output directory.')
_DIM = flags.DEFINE_integer('dim', 64, 'Data dimension.')
_LATENT = flags.DEFINE_integer('latent_dim', 32, 'Latent dimension d.')
_DECAY = flags.DEFINE_float('decay', 2.0, 'Power-law exponent of the data '
                            'variances, lambda_i ~ i^-decay.')
_K = flags.DEFINE_integer('k', 1024, 'VQ codebook size K (rate log2 K bits).')
_Q = flags.DEFINE_integer('q', 16, 'PCA components Q.')
_STEPS = flags.DEFINE_integer('steps', 4000, 'Train steps per method.')
_WARMUP = flags.DEFINE_integer('warmup_steps', 1000,
                               'Identity steps before VQ in vq_warmup.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Batch size.')
_LR = flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate (also '
                         'the PCA layer\'s Hebbian rate, tied as in the '
                         'reference).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 200, 'Steps between the '
                                   'dimension measurements.')
_EVAL_N = flags.DEFINE_integer('eval_samples', 8192, 'Held-out samples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed.')
_QUICK = flags.DEFINE_bool('quick', False, 'A short run (800 steps, 200 '
                           'warm-up, 2048 held-out samples).')

METHODS = ('vq', 'vq_warmup', 'pca')
LABELS = {'vq': 'VQ from scratch', 'vq_warmup': 'VQ after AE warm-up',
          'pca': 'PCA bottleneck'}


class LinearAE(nn.Module):
  """`Dense -> bottleneck -> Dense` with the latent as a 1x1 NHWC map, so
  the package's bottlenecks and warm-up switch apply unchanged (the
  bottleneck submodule is named `bottleneck`, the flag `warmup/active`, as
  in `autoencoder.Autoencoder`)."""
  dim: int
  latent_dim: int
  kind: str
  kwargs: Dict[str, Any]
  warmup: bool = False

  def setup(self):
    self.encoder = nn.Dense(self.latent_dim)
    self.bottleneck = bottlenecks.get(self.kind)(**self.kwargs)
    self.decoder = nn.Dense(self.dim)
    if self.warmup:
      self.quantizer_active = self.variable(
          warmup.COLLECTION, 'active', lambda: jnp.zeros((), jnp.int32))

  def encode(self, x):
    return self.encoder(x)[:, None, None, :]

  def __call__(self, x, train: bool, lr=None):
    z = self.encode(x)
    z_hat, aux = self.bottleneck(z, train, lr=lr)
    if self.warmup:
      z_hat, aux = autoencoder.warmup_gate(self.quantizer_active.value, z,
                                           z_hat, aux)
    aux = dict(aux, z_e=z[:, 0, 0], z_q=z_hat[:, 0, 0])
    return self.decoder(z_hat[:, 0, 0]), aux


def data_covariance(dim: int, decay: float, seed: int):
  """`(variances, rotation)`: power-law variances with mean 1."""
  lam = np.arange(1, dim + 1, dtype=np.float64) ** -decay
  lam = lam / lam.mean()
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  return lam, u


def sampler(lam, u):
  scale = jnp.asarray(np.sqrt(lam), jnp.float32)
  rot = jnp.asarray(u.T, jnp.float32)

  def sample(key, n):
    return (jax.random.normal(key, (n, len(lam))) * scale) @ rot
  return sample


def bottleneck_config(method: str, k: int, q: int):
  if method == 'pca':
    # The OPCA-VAE rule (its Hebbian rate the optimizer's), unclipped.
    return 'pca', dict(num_components=q, mode='shared', tracker='reference',
                       learning_rate=None, max_update_norm=None,
                       orthonormalize_every=None,
                       orthonormalization='symmetric')
  return 'vq', dict(codebook_size=k)


def measure(model, variables, x, lam_total) -> Dict[str, Any]:
  """Dimensions and loss of a model on the held-out set `x`."""
  recon, aux = model.apply(variables, x, train=False)
  mse = float(jnp.mean(jnp.square(recon - x)))
  z_e, z_q = np.asarray(aux['z_e']), np.asarray(aux['z_q'])
  s_e, s_q = analysis.singular_values(z_e), analysis.singular_values(z_q)
  out = {'rel_mse': mse * x.shape[1] / lam_total,
         'z_e_dim99': analysis.explained_variance_dim(s_e),
         'z_q_dim99': analysis.explained_variance_dim(s_q),
         'z_e_erank': analysis.effective_rank(s_e),
         'z_e_variances': (s_e ** 2 / len(z_e)).tolist(),
         'z_q_spectrum': s_q.tolist()}
  if 'codebook' in aux:
    cb = np.asarray(aux['codebook'])
    used = np.unique(np.asarray(aux['codes']))
    out['codebook_dim99'] = analysis.explained_variance_dim(
        analysis.singular_values(cb))
    out['used_codes'] = int(used.size)
    s_used = analysis.singular_values(cb[used]) if used.size > 1 else [0.0]
    out['used_codebook_dim99'] = analysis.explained_variance_dim(s_used)
  return out


def run(method: str, args: Dict[str, Any], lam, u, log) -> Dict[str, Any]:
  """Trains one method; returns the final measurements and the history."""
  kind, kwargs = bottleneck_config(method, args['k'], args['q'])
  use_warmup = method == 'vq_warmup'
  model = LinearAE(args['dim'], args['latent_dim'], kind, kwargs,
                   warmup=use_warmup)
  sample = sampler(lam, u)
  key = jax.random.PRNGKey(args['seed'])
  init_key, data_key, eval_key, kmeans_key = jax.random.split(key, 4)
  variables = dict(model.init({'params': init_key}, jnp.zeros(
      (1, args['dim'])), train=False))
  params = variables.pop('params')
  cols = variables
  tx = optax.adam(args['learning_rate'])
  opt_state = tx.init(params)
  lr = jnp.float32(args['learning_rate'])
  x_eval = sample(eval_key, args['eval_samples'])
  lam_total = float(lam.sum())

  @jax.jit
  def step(params, cols, opt_state, x):
    def loss_fn(p):
      (recon, aux), new_cols = model.apply(
          {'params': p, **cols}, x, train=True, lr=lr, mutable=list(cols))
      rec = jnp.mean(jnp.square(recon - x))
      return rec + aux['loss'], (dict(new_cols), rec)
    (_, (new_cols, rec)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_cols, opt_state, rec

  switch = None
  if use_warmup:
    config = ml_collections.ConfigDict({'model': {'bottleneck': dict(
        kind=kind, warmup_kmeans_iters=args['kmeans_iters'])}})
    switch = jax.jit(warmup.make_switch_fn(config))
    encode = jax.jit(lambda p, x: model.apply({'params': p, **cols}, x,
                                              method=LinearAE.encode))

  history = []
  t0 = time.perf_counter()
  for i in range(args['steps'] + 1):
    if switch is not None and i == args['warmup_steps']:
      # The trainer's switch: k-means on the latents of the next batches.
      latents = tuple(
          encode(params, sample(jax.random.fold_in(data_key, i + j),
                                args['batch_size']))
          for j in range(args['kmeans_batches']))
      state, stats = switch({'params': params, **cols}, latents, kmeans_key)
      params = state.pop('params')
      cols = state
      log(f'  {method}: switch at step {i}: '
          f'{ {k: round(float(v), 4) for k, v in stats.items()} }')
    if i % args['eval_every'] == 0 or i == args['steps']:
      m = measure(model, {'params': params, **cols}, x_eval, lam_total)
      m['step'] = i
      history.append(m)
    if i == args['steps']:
      break
    x = sample(jax.random.fold_in(data_key, i), args['batch_size'])
    params, cols, opt_state, _ = step(params, cols, opt_state, x)
  final = dict(history[-1])
  final['seconds'] = time.perf_counter() - t0
  final['waterfilling_dim_latent'] = analysis.waterfilling_dim(
      final['z_e_variances'], np.log2(args['k']))
  log(f'  {method}: rel. MSE {final["rel_mse"]:.4f}, z_e dim99 '
      f'{final["z_e_dim99"]}, z_q dim99 {final["z_q_dim99"]}, '
      f'codebook dim99 {final.get("codebook_dim99", "-")} '
      f'(used {final.get("used_codebook_dim99", "-")}), '
      f'{final["seconds"]:.1f} s')
  return {'final': final, 'history': history}


def table(results, summary) -> str:
  lines = [
      f"Data: dim {summary['dim']}, variances ~ i^-{summary['decay']} (mean "
      f"1), 99%-variance dimension {summary['data_dim99']}. Linear AE with "
      f"latent d = {summary['latent_dim']}; VQ K = {summary['k']} "
      f"(R = {summary['rate_bits']:g} bits); PCA Q = {summary['q']}; "
      f"{summary['steps']} steps (warm-up {summary['warmup_steps']}), batch "
      f"{summary['batch_size']}, Adam {summary['learning_rate']:g}.",
      '',
      f"Water-filling prediction at R = {summary['rate_bits']:g} bits on the "
      f"data spectrum: **{summary['waterfilling_dim_data']}** dimensions; "
      f"Gaussian rate-distortion bound on the relative MSE: "
      f"{summary['rd_bound_rel_mse']:.4f}.",
      '']
  rows = []
  for method in METHODS:
    f = results[method]['final']
    cb = (f"{f['codebook_dim99']} / {f['used_codebook_dim99']}"
          if 'codebook_dim99' in f else '-')
    used = f"{f['used_codes']} of {summary['k']}" if 'used_codes' in f else '-'
    rows.append([LABELS[method], f"{f['rel_mse']:.4f}", str(f['z_e_dim99']),
                 str(f['z_q_dim99']), cb, used,
                 str(f['waterfilling_dim_latent']), f"{f['seconds']:.0f}"])
  lines += harness.markdown_table(
      ['method', 'rel. MSE', 'z_e dim99', 'z_q dim99',
       'codebook dim99 (all / used)', 'used codes',
       'water-filling dim (own z_e)', 'seconds'], rows)
  lines += [
      '',
      'z_q dim99 of a VQ run is the dimension of the codes weighted by use; '
      '"used" counts codes hit by the held-out set. The PCA bottleneck keeps '
      'Q continuous coefficients, so its MSE is not at log2 K bits and is not '
      'comparable with the bound.']
  return '\n'.join(lines) + '\n'


def plot(results, summary, path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(15, 4.2), dpi=100)
  fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86,
                      wspace=0.25)
  ax_dim, ax_mse, ax_spec = fig.subplots(1, 3)
  colors = {'vq': 'tab:red', 'vq_warmup': 'tab:blue', 'pca': 'tab:green'}
  for method in METHODS:
    h = results[method]['history']
    steps = [m['step'] for m in h]
    c = colors[method]
    ax_dim.plot(steps, [m['z_q_dim99'] for m in h], color=c,
                label=f'{LABELS[method]}: z_q')
    if 'used_codebook_dim99' in h[-1]:
      ax_dim.plot(steps, [m['used_codebook_dim99'] for m in h], color=c,
                  ls='--', label=f'{LABELS[method]}: used codes')
    ax_mse.plot(steps, [m['rel_mse'] for m in h], color=c,
                label=LABELS[method])
    s = np.asarray(h[-1]['z_q_spectrum'])
    ax_spec.plot(np.arange(1, s.size + 1), np.log10(np.maximum(s / s[0],
                                                               1e-6)),
                 color=c, label=LABELS[method])
  ax_dim.axhline(summary['waterfilling_dim_data'], color='k', ls=':',
                 label='water-filling prediction')
  ax_dim.axhline(summary['data_dim99'], color='gray', ls='-.',
                 label='data dim99')
  if summary['warmup_steps']:
    for ax in (ax_dim, ax_mse):
      ax.axvline(summary['warmup_steps'], color='tab:blue', alpha=0.3)
  ax_dim.set(xlabel='step', ylabel='99%-variance dimension',
             title='dimension over training')
  ax_mse.axhline(summary['rd_bound_rel_mse'], color='k', ls=':',
                 label='RD bound at log2 K bits')
  ax_mse.set(xlabel='step', ylabel='MSE / data variance', yscale='log',
             title='reconstruction error')
  lam = np.sort(np.asarray(summary['data_variances']))[::-1]
  ax_spec.plot(np.arange(1, lam.size + 1), np.log10(np.sqrt(lam / lam[0])),
               color='gray', ls='-.', label='data')
  ax_spec.set(xlabel='index i', ylabel='log10(s_i / s_1)',
              title='final spectrum of z_q')
  for ax in (ax_dim, ax_mse, ax_spec):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(
      f"Linear AE on power-law Gaussian data (dim {summary['dim']}, decay "
      f"{summary['decay']:g}, d = {summary['latent_dim']}, K = "
      f"{summary['k']}, Q = {summary['q']})", fontsize=10)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(viz.figure_to_array(fig)).save(path)


def main(argv):
  del argv
  args = dict(dim=_DIM.value, latent_dim=_LATENT.value, decay=_DECAY.value,
              k=_K.value, q=_Q.value, steps=_STEPS.value,
              warmup_steps=_WARMUP.value, batch_size=_BATCH.value,
              learning_rate=_LR.value, eval_every=_EVAL_EVERY.value,
              eval_samples=_EVAL_N.value, seed=_SEED.value,
              kmeans_batches=configlib.DEFAULT_KMEANS_BATCHES,
              kmeans_iters=configlib.DEFAULT_KMEANS_ITERS)
  if _QUICK.value:
    args.update(steps=800, warmup_steps=200, eval_every=100,
                eval_samples=2048)
  if not 0 < args['warmup_steps'] < args['steps']:
    raise ValueError('--warmup_steps must be in (0, --steps).')
  if args['q'] > args['latent_dim']:
    raise ValueError('--q must be <= --latent_dim.')
  os.makedirs(_OUT.value, exist_ok=True)
  lam, u = data_covariance(args['dim'], args['decay'], args['seed'])
  rate = float(np.log2(args['k']))
  theta, _ = analysis.reverse_waterfilling(lam, rate)
  summary = dict(args, rate_bits=rate,
                 data_dim99=analysis.explained_variance_dim(np.sqrt(lam)),
                 waterfilling_dim_data=analysis.waterfilling_dim(lam, rate),
                 rd_bound_rel_mse=float(np.minimum(theta, lam).sum()
                                        / lam.sum()),
                 data_variances=lam.tolist())

  def log(msg):
    print(msg, flush=True)

  t0 = time.perf_counter()
  results = {}
  for method in METHODS:
    log(f'{LABELS[method]} ...')
    results[method] = run(method, args, lam, u, log)
  summary['total_seconds'] = time.perf_counter() - t0
  md = table(results, summary)
  with open(os.path.join(_OUT.value, 'results.md'), 'w') as f:
    f.write(md)
  with open(os.path.join(_OUT.value, 'results.json'), 'w') as f:
    json.dump({'summary': summary, 'results': results}, f, indent=1)
  plot(results, summary, os.path.join(_OUT.value, 'synthetic_collapse.png'))
  print(md)
  print(f"Total {summary['total_seconds']:.0f} s. Outputs in {_OUT.value}: "
        'results.md, results.json, synthetic_collapse.png')


if __name__ == '__main__':
  app.run(main)
