"""AE warm-up: continuous first, discrete later (arXiv 2605.06870).

With `config.model.bottleneck.warmup_steps = N > 0` the model trains as a
plain autoencoder for N steps (the bottleneck's output is replaced by its
input: `Autoencoder(warmup=True)` and its `warmup/active` flag), then the
quantizer switches on. At the switch, before the update of step N:

  1. the encoder (as trained so far) encodes `warmup_kmeans_batches`
     training batches: those of steps N, N+1, ... (a pure function of
     `(seed, step)`, like every batch);
  2. the quantizer is initialised from those latents:
       vq         codebook <- k-means centres (greedy k-means++ and
                  `warmup_kmeans_iters` Lloyd iterations, `analysis.kmeans`);
       ema_vq     embedding <- centres; cluster_size <- hits per batch in the
                  k-means assignment (at least 1, the layer's own initial
                  count); embedding_sum <- embedding * cluster_size, so the
                  EMA continues from the k-means codebook;
       vqgan_fc   k-means on the l2-normalised lookup vectors (the current
                  `proj_in` applied to the latents); codebook <- normalised
                  centres;
       simvq      its codebook is a linear image `F W + b` of a frozen random
                  `F`, so no k-means codebook can be written exactly: `W, b`
                  are set so that the mapped codebook has the k-means
                  centres' mean and covariance;
       fsq, lfq   fixed grids, nothing to initialise: the switch only turns
                  the rounding on (their projections start untrained);
       pca        basis, mean and coefficient variances <- an exact PCA of
                  the latents (`pca.exact_pca`, per location in `spatial`
                  mode);
  3. the flag is set; parameters and optimizer state of the encoder and
     decoder are kept as they are.

The randomness (k-means++ seeding) comes from `fold_in(fold_in(rng, N),
KMEANS_STREAM)`, so a run resumed from a checkpoint taken before step N
switches at the same step with the same codebook as an uninterrupted one,
and one resumed after it (flag already set) does not switch again.

Note on Adam: a gradient-trained codebook (`vq`, `vqgan_fc`) gets zero
gradients during warm-up, so its Adam moments are ~0 at the switch while
the step count (shared by every parameter) is N; its first updates after
the switch are then larger than a fresh optimizer's (the bias correction
no longer divides by small numbers), up to a few times the learning rate
for the first few hundred steps.
"""

import time
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from pcavae import analysis
from pcavae import configlib
from pcavae import sharding
from pcavae.data import pipeline
from pcavae.models import pca as pca_lib

Array = jax.Array
State = Dict[str, Any]

WARMUP_KINDS = ('vq', 'ema_vq', 'simvq', 'vqgan_fc', 'fsq', 'lfq', 'pca')
KMEANS_KINDS = ('vq', 'ema_vq', 'simvq', 'vqgan_fc')
DEFAULT_KMEANS_BATCHES = 10
DEFAULT_KMEANS_ITERS = 20
# fold_in constant of the k-means seeding stream (distinct from the step's
# sampling stream `fold_in(rng, step)`).
KMEANS_STREAM = 0x5717C4
COLLECTION = 'warmup'
# Name of the bottleneck submodule in the Autoencoder's variable trees.
MODULE = 'bottleneck'


def enabled(config: ml_collections.ConfigDict) -> bool:
  return configlib.warmup_steps(config) > 0


def kmeans_batches(config: ml_collections.ConfigDict) -> int:
  return int(config.model.bottleneck.get('warmup_kmeans_batches',
                                         DEFAULT_KMEANS_BATCHES))


def kmeans_iters(config: ml_collections.ConfigDict) -> int:
  return int(config.model.bottleneck.get('warmup_kmeans_iters',
                                         DEFAULT_KMEANS_ITERS))


def _replace(tree: Dict[str, Any], path: Sequence[str], value: Any
             ) -> Dict[str, Any]:
  """A shallow copy of nested dicts `tree` with `tree[path...] = value`."""
  out = dict(tree)
  if len(path) == 1:
    out[path[0]] = value
  else:
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def _l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  # The same normalisation as FactorizedVQBottleneck's.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1,
                                               keepdims=True), eps * eps))


def _dense(p: Dict[str, Array], x: Array) -> Array:
  return jnp.matmul(x, p['kernel'], precision=jax.lax.Precision.HIGHEST) + (
      p['bias'])


def _sym_power(cov: Array, power: float, eps: float = 1e-10) -> Array:
  lam, u = jnp.linalg.eigh(0.5 * (cov + cov.T))
  return (u * jnp.maximum(lam, eps) ** power) @ u.T


def _covariance(x: Array) -> Tuple[Array, Array]:
  mean = jnp.mean(x, 0)
  xc = x - mean
  return mean, jnp.matmul(xc.T, xc, precision=jax.lax.Precision.HIGHEST) / (
      x.shape[0])


def match_moments(frozen: Array, target: Array) -> Tuple[Array, Array]:
  """`W, b` such that `frozen @ W + b` has the mean and covariance of
  `target` (rows are vectors): `W = S_f^(-1/2) S_t^(1/2)`, symmetric roots.
  """
  mean_f, cov_f = _covariance(frozen.astype(jnp.float32))
  mean_t, cov_t = _covariance(target.astype(jnp.float32))
  w = _sym_power(cov_f, -0.5) @ _sym_power(cov_t, 0.5)
  return w, mean_t - mean_f @ w


def lookup_vectors(kind: str, params: Dict[str, Any], latents: Array
                   ) -> Array:
  """`(n, d)` vectors that the bottleneck `kind` looks codes up with, from
  NHWC encoder latents."""
  flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
  if kind == 'vqgan_fc':
    return _l2_normalize(_dense(params[MODULE]['proj_in'], flat))
  return flat


def pca_samples(mode: str, latents: Array) -> Array:
  """NHWC latents -> the samples the PCA bottleneck sees in `mode`."""
  b, h, w, d = latents.shape
  x = latents.astype(jnp.float32)
  if mode == 'spatial':
    return jnp.transpose(x.reshape(b, h * w, d), (1, 0, 2))   # (L, n, D)
  if mode == 'shared':
    return x.reshape(b * h * w, d)
  return x.reshape(b, h * w * d)                                # global


def make_switch_fn(config: ml_collections.ConfigDict
                   ) -> Callable[[State, Sequence[Array], Array],
                                 Tuple[State, Dict[str, Array]]]:
  """`(state, latent batches, key) -> (state, stats)`: the switch, jittable.

  `latent batches` are NHWC encoder outputs; the returned state has the
  quantizer initialised from them (module docstring) and the flag set.
  """
  b = config.model.bottleneck
  kind = b.kind
  iters = kmeans_iters(config)

  def switch(state: State, latents: Sequence[Array], key: Array
             ) -> Tuple[State, Dict[str, Array]]:
    z = jnp.concatenate(list(latents), axis=0)
    num_batches = len(latents)
    stats: Dict[str, Array] = {}
    state = dict(state)
    if kind in KMEANS_KINDS:
      x = lookup_vectors(kind, state['params'], z)
      if kind == 'ema_vq':
        k = state['vq_ema'][MODULE]['embedding'].shape[0]
      elif kind == 'simvq':
        k = state['simvq'][MODULE]['frozen_codebook'].shape[0]
      else:
        k = state['params'][MODULE]['codebook'].shape[0]
      centres, assignment = analysis.kmeans(key, x, k=k, num_iters=iters)
      counts = jax.ops.segment_sum(jnp.ones(assignment.shape, jnp.float32),
                                   assignment, num_segments=k)
      err = jnp.mean(jnp.sum(jnp.square(x - centres[assignment]), -1))
      var = jnp.mean(jnp.sum(jnp.square(x - jnp.mean(x, 0)), -1))
      stats.update({
          'warmup/kmeans_samples': jnp.asarray(x.shape[0], jnp.float32),
          'warmup/kmeans_used_codes': jnp.sum(counts > 0).astype(jnp.float32),
          'warmup/kmeans_distortion': err,
          'warmup/kmeans_relative_distortion': err / jnp.maximum(var, 1e-12),
      })
      if kind == 'vq':
        state['params'] = _replace(state['params'], (MODULE, 'codebook'),
                                   centres)
      elif kind == 'vqgan_fc':
        state['params'] = _replace(state['params'], (MODULE, 'codebook'),
                                   _l2_normalize(centres))
      elif kind == 'ema_vq':
        size = jnp.maximum(counts / num_batches, 1.0)
        ema = dict(state['vq_ema'][MODULE], embedding=centres,
                   embedding_sum=centres * size[:, None], cluster_size=size)
        state['vq_ema'] = _replace(state['vq_ema'], (MODULE,), ema)
      else:  # simvq
        w, bias = match_moments(state['simvq'][MODULE]['frozen_codebook'],
                                centres)
        state['params'] = _replace(state['params'],
                                   (MODULE, 'codebook_map'),
                                   {'kernel': w, 'bias': bias})
    elif kind == 'pca':
      p = state['pca'][MODULE]
      q = p['basis'].shape[-1]
      x = pca_samples(b.get('mode', 'spatial'), z)
      mean, basis, variances = pca_lib.exact_pca(x, q)
      total = jnp.sum(jnp.var(x, axis=-2), axis=-1)
      stats['warmup/pca_explained_variance'] = jnp.mean(
          jnp.sum(variances, -1) / jnp.maximum(total, 1e-12))
      stats['warmup/pca_samples'] = jnp.asarray(x.shape[-2], jnp.float32)
      state['pca'] = _replace(state['pca'], (MODULE,), dict(
          p, basis=basis.astype(p['basis'].dtype),
          mean=mean.astype(p['mean'].dtype),
          coef_var=variances.astype(p['coef_var'].dtype)))
    state[COLLECTION] = _replace(state[COLLECTION], ('active',),
                                 jnp.ones((), jnp.int32))
    return state, stats

  return switch


class Switch:
  """Host side of the switch: collects latents and applies `make_switch_fn`.

  Built by the trainer when `warmup_steps > 0`; call it once, when the loop
  is at step `self.step` (updates applied so far), before that step's
  update.
  """

  def __init__(self, model, config: ml_collections.ConfigDict, mesh,
               state_sharding: Any,
               collections_of: Callable[[State], Dict[str, Any]]):
    self.config = config
    self.mesh = mesh
    self.step = configlib.warmup_steps(config)
    self.num_batches = kmeans_batches(config)

    def encode(state: State, images: Array) -> Array:
      variables = {'params': state['params'], **collections_of(state)}
      return model.apply(variables, images, method=lambda m, x: m.encode(x))

    self._encode = jax.jit(encode)
    replicated = sharding.replicated(mesh)
    self._switch = jax.jit(make_switch_fn(config),
                           out_shardings=(state_sharding, replicated),
                           donate_argnums=(0,))

  def __call__(self, state: State, source) -> Tuple[State, Dict[str, float]]:
    """Returns the switched state and scalar statistics of the switch."""
    t0 = time.perf_counter()
    cfg = self.config
    ds = pipeline.train_dataset(
        source, global_batch_size=cfg.batch_size, seed=cfg.seed,
        start_step=self.step, process_index=jax.process_index(),
        process_count=jax.process_count())
    latents = tuple(
        self._encode(state, sharding.global_batch(ds[i], self.mesh))
        for i in range(self.num_batches))
    key = jax.random.fold_in(jax.random.fold_in(state['rng'], self.step),
                             KMEANS_STREAM)
    state, stats = self._switch(state, latents, key)
    out = {k: float(v) for k, v in jax.device_get(stats).items()}
    out['warmup/switch_step'] = self.step
    out['warmup/switch_seconds'] = time.perf_counter() - t0
    return state, out
