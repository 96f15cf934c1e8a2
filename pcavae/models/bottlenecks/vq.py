"""The vector quantizers: VQ-VAE, EMA-VQ, SimVQ and VQGAN-FC.

Each is selected by `config.model.bottleneck.kind`; they return `codes`, one
int32 index per latent location, batch statistics (`codebook_usage`,
`perplexity`) that the trainer logs, and their explicit codebook as
`codebook`, `(K, d)`, in the space where the lookup happens (the spectra at
eval read it there). Distances and codebook updates are always float32.

At the AE warm-up switch (`pcavae.warmup`) each writes a k-means codebook of
the encoder's latents (`warmup_init`): `vq` the centres; `ema_vq` the
centres, with hits per batch of the k-means assignment (at least 1, the
layer's own initial count) as `cluster_size` and `embedding_sum = embedding
* cluster_size`, so that the EMA continues from them; `vqgan_fc` k-means on
the l2-normalised lookup vectors (its current `proj_in` applied to the
latents), the codebook the normalised centres; `simvq`, whose codebook is a
linear image `F W + b` of a frozen random `F`, so that no k-means codebook
can be written exactly: `W, b` such that the mapped codebook has the
centres' mean and covariance (`match_moments`).
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae import checks
from pcavae import losses
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import batch_code_stats
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import check_optional
from pcavae.models.bottlenecks.base import dense
from pcavae.models.bottlenecks.base import flat_vectors
from pcavae.models.bottlenecks.base import flatten
from pcavae.models.bottlenecks.base import KEY
from pcavae.models.bottlenecks.base import kmeans_codebook
from pcavae.models.bottlenecks.base import l2_normalize
from pcavae.models.bottlenecks.base import LatentShape
from pcavae.models.bottlenecks.base import register
from pcavae.models.bottlenecks.base import straight_through


def _variance_scaling_uniform(key: Array, shape: Tuple[int, int]) -> Array:
  """Sonnet's VQ-VAE codebook init: U(+-sqrt(3 / D)) for a `(K, D)` book."""
  limit = jnp.sqrt(3.0 / shape[-1])
  return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def nearest_code(z: Array, codebook: Array) -> Array:
  """Index of the nearest code (squared Euclidean) for each row of `z`.

  Args:
    z: `(n, d)` inputs.
    codebook: `(K, d)` codes.

  Returns:
    `(n,)` int32 indices.
  """
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  # HIGHEST: a TF32/bf16 matmul on accelerators can flip near-ties and
  # mis-assign codes; the lookup is cheap next to the convs.
  cross = jnp.matmul(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
  dist = (jnp.sum(jnp.square(z), -1, keepdims=True) - 2.0 * cross
          + jnp.sum(jnp.square(codebook), -1)[None, :])
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)



def vq_lookup(z: Array, codebook: Array, beta: float, legacy_beta: bool
              ) -> Tuple[Array, Aux]:
  """The lookup of a gradient-trained codebook: each vector of `z` is
  replaced by its nearest code `e` (straight-through), with the `vq` loss
  (`losses.vq_loss`) and batch statistics. Returns `(z + sg(e - z), aux)`."""
  flat, lead = flatten(z)
  codes = nearest_code(jax.lax.stop_gradient(flat), codebook)
  e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
  loss, cb, commit = losses.vq_loss(z, e, beta, legacy_beta)
  aux = {'loss': loss, 'codebook_loss': cb, 'commitment_loss': commit,
         'codes': codes.reshape(lead), 'codebook': codebook,
         **batch_code_stats(codes, codebook.shape[0])}
  return straight_through(z, e), aux


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


class CodebookBottleneck(Bottleneck):
  """What every vector quantizer shares: `codebook_size` codes (K), a code
  index per location (`log2 K` bits), `beta`, and a k-means warm-up."""
  codebook_size: int = 1024
  beta: float = 0.25

  symbol_key = 'codes'

  @property
  def num_codes(self) -> int:
    return int(self.codebook_size)

  def bits_per_token(self, latent_dim: int) -> float:
    del latent_dim
    return math.log2(self.num_codes)

  def validate(self, latent_shape: LatentShape) -> None:
    del latent_shape
    checks.positive(self.codebook_size, KEY + 'codebook_size')
    check_optional(checks.positive, self.beta, 'beta', float)

  def lookup_vectors(self, latents: Array) -> Array:
    """`(n, d)` vectors that codes are looked up with, from NHWC latents."""
    return flat_vectors(latents)

  def warmup_init(self, latents: Array, key: Array, num_batches: int,
                  kmeans_iters: int) -> Aux:
    """k-means of the lookup vectors; `set_codebook` writes the centres."""
    x = self.lookup_vectors(latents)
    k = self.codebook_shape()[0]
    centres, counts, stats = kmeans_codebook(x, k, key, kmeans_iters)
    self.set_codebook(centres, counts / num_batches)
    return stats

  def codebook_shape(self) -> Tuple[int, ...]:
    """`(K, d)` of the stored codebook (its variables', not the config's)."""
    raise NotImplementedError

  def set_codebook(self, centres: Array, hits_per_batch: Array) -> None:
    raise NotImplementedError


@register('vq')
class VQBottleneck(CodebookBottleneck):
  """VQ-VAE (van den Oord et al. 2017): a gradient-trained codebook.

  Each D-vector of the latent is replaced by its nearest code `e`; the
  decoder sees `z + sg(e - z)` (straight-through). Loss
  `||sg(z) - e||^2 + beta ||z - sg(e)||^2`. Note that taming-transformers'
  `VectorQuantizer2` defaults to `legacy=True`, which puts beta on the
  codebook term instead (`beta ||sg(z) - e||^2 + ||z - sg(e)||^2`); VQGAN
  checkpoints were trained that way. `legacy_beta=True` selects it.

  Attributes:
    codebook_size: K.
    beta: commitment weight (0.25).
    legacy_beta: taming's placement of beta (see above).
  """
  legacy_beta: bool = False

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    in_dtype = h.dtype
    z = h.astype(jnp.float32)
    codebook = self.param('codebook', _variance_scaling_uniform,
                          (self.codebook_size, z.shape[-1]))
    z_q, aux = vq_lookup(z, codebook, self.beta, self.legacy_beta)
    return z_q.astype(in_dtype), aux

  def codebook_shape(self) -> Tuple[int, ...]:
    return self.get_variable('params', 'codebook').shape

  def set_codebook(self, centres: Array, hits_per_batch: Array) -> None:
    del hits_per_batch
    self.put_variable('params', 'codebook', centres)

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    return jnp.take(self.get_variable('params', 'codebook'), symbols, axis=0)


def ema_codebook_update(embedding_sum: Array, cluster_size: Array,
                        flat: Array, codes: Array, decay: float, eps: float
                        ) -> Tuple[Array, Array, Array]:
  """One EMA codebook step with Laplace smoothing (VQ-VAE appendix; Sonnet).

  `N_k <- decay N_k + (1 - decay) n_k`, `m_k <- decay m_k + (1 - decay)
  sum_{i: code_i = k} z_i`, and `e_k = m_k / N~_k` with the Laplace-smoothed
  counts `N~_k = (N_k + eps) / (sum N + K eps) * sum N`, which keep a code
  that was never hit from dividing by zero.

  Args:
    embedding_sum: `(K, d)` EMA of the per-code sums of inputs.
    cluster_size: `(K,)` EMA of the per-code hit counts.
    flat: `(n, d)` stop-gradient inputs.
    codes: `(n,)` their code indices.
    decay: EMA decay (0.99).
    eps: Laplace smoothing constant (1e-5).

  Returns:
    `(embedding, embedding_sum, cluster_size)` after the step.
  """
  k = cluster_size.shape[0]
  onehot = jax.nn.one_hot(codes, k, dtype=jnp.float32)
  counts = jnp.sum(onehot, axis=0)
  sums = jnp.matmul(onehot.T, flat.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  cluster_size = decay * cluster_size + (1.0 - decay) * counts
  embedding_sum = decay * embedding_sum + (1.0 - decay) * sums
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (n + k * eps) * n
  return embedding_sum / smoothed[:, None], embedding_sum, cluster_size


@register('ema_vq')
class EMAVQBottleneck(CodebookBottleneck):
  """VQ-VAE with a codebook learned by exponential moving averages.

  The codebook gets no gradient: it lives in the `vq_ema` collection
  (`embedding`, `embedding_sum`, `cluster_size`) and is updated in training
  by `ema_codebook_update` from stop-gradient encoder outputs; the loss is
  the commitment term `beta ||z - sg(e)||^2` only. The output uses the codes
  chosen before this step's update (the codebook that assigned them).

  Convention: the EMAs start from the initial codebook, not from zero.
  `cluster_size` starts at one hit per code and `embedding_sum` at the
  initial codes, so `e_k = m_k / N~_k` is the initial code at step 0 and a
  code no batch has hit yet keeps its initial vector, decaying only towards
  what it wins. Sonnet's `VectorQuantizerEMA` instead starts both EMAs at
  zero and divides out the zero-start bias (`ExponentialMovingAverage` with
  `zero_debias`); both are legitimate estimates of the same running means.
  We start from the codebook because with zero counts (and no debiasing) the
  first update divides a code that no input chose by `eps`, throwing it far
  away where it stays dead, and because a k-means-initialised codebook (AE
  warm-up, pcavae/warmup.py) is then the EMA's starting point rather than
  something the first batches overwrite.

  Dead-code restart (off by default): a code whose EMA hit count falls below
  `dead_code_threshold` is moved to a random encoder output of the current
  batch, with its count reset to 1 (an expected hit per step, which gives it
  about `log(threshold) / log(decay)` steps to win samples before the next
  restart).

  Attributes:
    codebook_size: K.
    beta: commitment weight (0.25).
    decay: EMA decay (0.99).
    eps: Laplace smoothing (1e-5).
    dead_code_threshold: restart codes whose EMA hit count is below this;
      None disables restarts.
  """
  decay: float = 0.99
  eps: float = 1e-5
  dead_code_threshold: Optional[float] = None

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    in_dtype = h.dtype
    z = h.astype(jnp.float32)
    k, d = self.codebook_size, z.shape[-1]
    init_rng = (self.make_rng('params') if self.is_initializing() else None)
    embedding = self.variable(
        'vq_ema', 'embedding',
        lambda: _variance_scaling_uniform(init_rng, (k, d)))
    embedding_sum = self.variable('vq_ema', 'embedding_sum',
                                  lambda: embedding.value)
    cluster_size = self.variable('vq_ema', 'cluster_size',
                                 lambda: jnp.ones((k,), jnp.float32))

    flat, lead = flatten(z)
    flat_sg = jax.lax.stop_gradient(flat)
    codebook = jax.lax.stop_gradient(embedding.value)
    codes = nearest_code(flat_sg, codebook)
    e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
    commit = jnp.mean(jnp.square(z - e))
    aux = {'loss': self.beta * commit, 'commitment_loss': commit,
           'codes': codes.reshape(lead), 'codebook': codebook,
           **batch_code_stats(codes, k)}

    if train and not self.is_initializing():
      new_emb, new_sum, new_size = ema_codebook_update(
          embedding_sum.value, cluster_size.value, flat_sg, codes,
          self.decay, self.eps)
      if self.dead_code_threshold is not None:
        dead = new_size < self.dead_code_threshold
        pick = jax.random.randint(self.make_rng('sample'), (k,), 0,
                                  flat_sg.shape[0])
        fresh = jnp.take(flat_sg, pick, axis=0)
        new_emb = jnp.where(dead[:, None], fresh, new_emb)
        new_sum = jnp.where(dead[:, None], fresh, new_sum)
        new_size = jnp.where(dead, 1.0, new_size)
        aux['dead_code_restarts'] = jnp.sum(dead.astype(jnp.float32))
      embedding.value, embedding_sum.value, cluster_size.value = (
          new_emb, new_sum, new_size)
    return straight_through(z, e).astype(in_dtype), aux

  def validate(self, latent_shape: LatentShape) -> None:
    super().validate(latent_shape)
    if not 0.0 <= self.decay < 1.0:
      raise ValueError(f'{KEY}decay={self.decay!r} must be in [0, 1).')
    check_optional(checks.positive, self.dead_code_threshold,
                   'dead_code_threshold', float)

  def codebook_shape(self) -> Tuple[int, ...]:
    return self.get_variable('vq_ema', 'embedding').shape

  def set_codebook(self, centres: Array, hits_per_batch: Array) -> None:
    size = jnp.maximum(hits_per_batch, 1.0)
    self.put_variable('vq_ema', 'embedding', centres)
    self.put_variable('vq_ema', 'embedding_sum', centres * size[:, None])
    self.put_variable('vq_ema', 'cluster_size', size)

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    return jnp.take(self.get_variable('vq_ema', 'embedding'), symbols, axis=0)


@register('simvq')
class SimVQBottleneck(CodebookBottleneck):
  """SimVQ (Zhu et al. 2024): a frozen random codebook times a learned map.

  The codes are `C W + b` with `C ~ N(0, d^-1/2)` fixed at init (held in the
  `simvq` collection, never updated) and the linear map `W, b` learned; the
  lookup, straight-through and loss are those of `vq`. Training the map
  rotates/scales the whole codebook at once, so no code is left behind.

  Attributes:
    codebook_size: K.
    beta: commitment weight.
    legacy_beta: taming's placement of beta (see `VQBottleneck`).
  """
  legacy_beta: bool = False

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    in_dtype = h.dtype
    z = h.astype(jnp.float32)
    k, d = self.codebook_size, z.shape[-1]
    init_rng = (self.make_rng('params') if self.is_initializing() else None)
    frozen = self.variable(
        'simvq', 'frozen_codebook',
        lambda: jax.random.normal(init_rng, (k, d), jnp.float32) * d ** -0.5)
    codebook = nn.Dense(d, name='codebook_map', dtype=jnp.float32,
                        precision=jax.lax.Precision.HIGHEST)(
                            jax.lax.stop_gradient(frozen.value))
    z_q, aux = vq_lookup(z, codebook, self.beta, self.legacy_beta)
    return z_q.astype(in_dtype), aux

  def codebook_shape(self) -> Tuple[int, ...]:
    return self.get_variable('simvq', 'frozen_codebook').shape

  def set_codebook(self, centres: Array, hits_per_batch: Array) -> None:
    del hits_per_batch
    w, bias = match_moments(self.get_variable('simvq', 'frozen_codebook'),
                            centres)
    self.put_variable('params', 'codebook_map', {'kernel': w, 'bias': bias})

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    book = dense(self.get_variable('params', 'codebook_map'),
                 self.get_variable('simvq', 'frozen_codebook'),
                 precision=jax.lax.Precision.HIGHEST)
    return jnp.take(book, symbols, axis=0)



@register('vqgan_fc')
class FactorizedVQBottleneck(CodebookBottleneck):
  """Factorized, l2-normalised codes (ViT-VQGAN, Yu et al. 2022).

  A linear map takes each D-vector to `lookup_dim` dimensions; inputs and
  codes are l2-normalised, so the nearest code is the one of highest cosine
  similarity; the selected code (straight-through, `vq` loss on the
  normalised vectors) is mapped back to D by a second linear layer.

  Attributes:
    codebook_size: K.
    lookup_dim: dimension of the lookup space (8).
    beta: commitment weight.
    legacy_beta: taming's placement of beta (see `VQBottleneck`).
  """
  lookup_dim: int = 8
  legacy_beta: bool = False

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    in_dtype = h.dtype
    d = h.shape[-1]
    z = nn.Dense(self.lookup_dim, name='proj_in', dtype=jnp.float32)(
        h.astype(jnp.float32))
    z = l2_normalize(z)
    codebook = l2_normalize(self.param(
        'codebook', nn.initializers.normal(1.0),
        (self.codebook_size, self.lookup_dim), jnp.float32))
    z_q, aux = vq_lookup(z, codebook, self.beta, self.legacy_beta)
    z_q = nn.Dense(d, name='proj_out', dtype=jnp.float32)(z_q)
    return z_q.astype(in_dtype), aux


  def validate(self, latent_shape: LatentShape) -> None:
    super().validate(latent_shape)
    check_optional(checks.positive, self.lookup_dim, 'lookup_dim')

  def lookup_vectors(self, latents: Array) -> Array:
    """The l2-normalised lookup vectors (the current `proj_in`)."""
    return l2_normalize(dense(self.get_variable('params', 'proj_in'),
                              flat_vectors(latents),
                              precision=jax.lax.Precision.HIGHEST))

  def codebook_shape(self) -> Tuple[int, ...]:
    return self.get_variable('params', 'codebook').shape

  def set_codebook(self, centres: Array, hits_per_batch: Array) -> None:
    del hits_per_batch
    self.put_variable('params', 'codebook', l2_normalize(centres))

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    book = l2_normalize(self.get_variable('params', 'codebook'))
    return dense(self.get_variable('params', 'proj_out'),
                 jnp.take(book, symbols, axis=0))