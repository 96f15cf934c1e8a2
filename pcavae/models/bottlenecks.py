"""Latent bottlenecks and the name -> class registry.

Every bottleneck is a Flax module called as `bottleneck(h, train, lr=...)` on
an NHWC encoder output and returns `(h_hat, aux)`: `h_hat` has the shape of
`h` and `aux` is a dict of named arrays (`loss`, the bottleneck's own loss
term, always present; `coefficients` or `codes`; statistics). Bottlenecks
with an explicit codebook (`vq`, `ema_vq`, `simvq`, `vqgan_fc`) also return
it as `codebook`, `(K, d)`, in the space where the lookup happens (the
spectra at eval read it there). Training may mutate only non-`params`
collections; `train=False` mutates nothing.

`lr` is the optimizer's current learning rate. The PCA bottleneck uses it as
its Hebbian step size when `learning_rate` is None (the reference ties the two);
other bottlenecks ignore it.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae import bits
from pcavae import losses
from pcavae.metrics import codebook as codebook_metrics
from pcavae.models import pca

Array = jax.Array
Aux = Dict[str, Array]

_REGISTRY: Dict[str, Type[nn.Module]] = {}

PCA_MODES = ('spatial', 'shared', 'global')
PCA_TRACKERS = ('reference', 'sanger', 'subspace')


def register(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
  def wrap(cls):
    _REGISTRY[name] = cls
    return cls
  return wrap


def get(kind: str) -> Type[nn.Module]:
  """Returns the bottleneck class registered as `kind`."""
  if kind not in _REGISTRY:
    raise ValueError(
        f'config.model.bottleneck.kind={kind!r} is not a known bottleneck; '
        f'choose one of {sorted(_REGISTRY)}.')
  return _REGISTRY[kind]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


@register('identity')
class IdentityBottleneck(nn.Module):
  """The plain autoencoder: `h_hat = h`."""

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    return h, {'loss': jnp.zeros((), jnp.float32)}


@register('pca')
class PCABottleneck(nn.Module):
  """Online PCA layer (PCA-VAE, arXiv 2602.18904; DESIGN.md §3).

  The basis `C` and mean `mu` live in the non-trainable `pca` collection and
  are updated outside the gradient by Sanger's rule on stop-gradient inputs;
  the encoder is trained through the projection `h_hat = C C^T (h - mu) + mu`.

  Attributes:
    num_components: Q, the number of principal components kept.
    mode: `spatial` (one PCA per latent location over D-vectors; basis
      `(L, D, Q)`), `shared` (one PCA over every location's D-vector; `(D, Q)`)
      or `global` (the whole latent as one vector; `(N, Q)`).
    alpha: fade factor of the running mean (bias-corrected EMA).
    tracker: how the basis follows the latents (`PCA_TRACKERS`):
      `reference` is the OPCA-VAE rule exactly: the raw Sanger step
      (`pca.sanger_delta`), whose size scales with the square of the latent's
      scale. `sanger` divides each column's step by its coefficient's
      variance (`pca.normalized_sanger_delta`): the same rate gives the same
      basis trajectory at any latent scale and is stable for rates in
      (0, 1]. `subspace` keeps a bias-corrected EMA of the covariance
      (`covariance_alpha`, state `cov` `(..., D, D)`: L x D x D floats in
      `spatial` mode) and takes `subspace_iterations` orthogonal iterations
      with Rayleigh-Ritz ordering on it every step
      (`pca.subspace_iteration`): the converged reference; it ignores
      `learning_rate`, `max_update_norm` and `orthonormalize_every`. Its
      work per step is `L (n D^2 + D^2 Q + D Q^2 + Q^3)` (covariance update,
      one product, QR, the Q x Q eigendecomposition) against Sanger's
      `L (n D Q + D Q^2)`: at `spatial16` (L = 256, D = 256, Q = 51, n = 16
      images a step) about 270 M (covariance) + 860 M (product) + 170 M
      (QR) multiply-adds a step, and 64 MiB of state. The class defaults
      are the reference rule (the layer as checked against OPCA-VAE);
      `configs/pcavae.py` chooses `sanger` at rate 0.1.
    learning_rate: Hebbian step size; None ties it to the optimizer's current
      learning rate passed as `lr` (the reference's choice).
    max_update_norm: Frobenius clip of each problem's step (reference: 0.1 in
      `spatial` mode, none in `global`). None disables it.
    covariance_alpha: fade factor of the `subspace` tracker's covariance.
    subspace_iterations: orthogonal iterations per step (`subspace`).
    orthonormalize_every: re-orthonormalise every this many updates (default
      Q, as in the reference).
    global_dim: in `global` mode, map the flattened latent to this many
      dimensions with a small MLP before the PCA and back after it (the
      reference's `embedding_dim` with `keep_shape=False`); None runs the PCA
      on the flattened latent itself.
    variance_alpha: fade factor of the running coefficient variances.
    orthonormality_tolerance: every `orthonormality_check_every` updates the
      error `max |C^T C - I|` is measured; above this tolerance the basis is
      re-orthonormalised at once (between the scheduled ones) and the event
      counted in `pca/forced_orthonormalizations`. None disables the check.
    orthonormality_check_every: how often that check runs (it costs one Gram
      matrix, as much as a Sanger step, so not every step).
    coefficient_bits: at eval (`train=False`), quantize every coefficient to
      this many bits (0..16) with a uniform quantizer whose step follows its
      running variance, and reconstruct from the quantized values
      (`pcavae.bits`); 32 (default) keeps unquantized float coefficients.
    coefficient_bit_budget: at eval, quantize with bits allocated over all
      coefficients of an image by reverse water-filling
      (`bits.allocate_bits`) for this many bits per image; None: off.
      Exclusive with `coefficient_bits` != 32.
    sample_sharding: in `spatial` mode, a sharding of the `(L, B, D)` samples
      split along the location axis (`pcavae.sharding.pca_location_sharding`,
      matching the PCA state's): each device then updates and projects only
      its own locations. None: XLA decides (under a mesh the samples follow
      the batch, and every device repeats the whole PCA on a replicated basis).

  At eval `aux` also holds `pca_input`: the samples as the PCA sees them
  (`(L, B, D)` spatial, `(B H W, D)` shared, `(B, N)` global), for the
  fidelity measures of every eval (`pcavae.evaluators.Spectra`).

  At eval with quantization on, `aux` also holds `symbols` (int32, the shape
  of `coefficients`) and `symbol_bits` (bits of each coefficient of one
  image: `(H, W, Q)`, `(Q,)` in `global` mode). `__call__` also takes an
  eval-only `coefficient_shift`, added to the (quantized) coefficients
  before reconstruction, broadcastable to `coefficients` (traversals).
  """
  num_components: int
  mode: str = 'spatial'
  alpha: float = 0.9
  tracker: str = 'reference'
  learning_rate: Optional[float] = None
  max_update_norm: Optional[float] = 0.1
  orthonormalize_every: Optional[int] = None
  global_dim: Optional[int] = None
  variance_alpha: float = 0.99
  orthonormality_tolerance: Optional[float] = 1e-2
  orthonormality_check_every: int = 16
  coefficient_bits: int = bits.FLOAT_BITS
  coefficient_bit_budget: Optional[int] = None
  sample_sharding: Optional[jax.sharding.Sharding] = None
  covariance_alpha: float = 0.99
  subspace_iterations: int = 1

  def _split_first(self, a: Array) -> Array:
    """Splits the first axis over the devices (`sample_sharding`), if set."""
    if self.sample_sharding is None or self.mode != 'spatial':
      return a
    return jax.lax.with_sharding_constraint(a, self.sample_sharding)

  def _samples(self, h: Array) -> Array:
    """NHWC latent -> `(problems..., n, dim)` samples for the PCA."""
    b, hh, ww, d = h.shape
    if self.mode == 'spatial':
      # With `sample_sharding`: split by image, then moved (one all-to-all)
      # to split by location. The first constraint keeps XLA from pushing the
      # location split back into the encoder's (H, W) axes.
      flat = self._split_first(h.reshape(b, hh * ww, d))         # (B, L, D)
      return self._split_first(jnp.transpose(flat, (1, 0, 2)))   # (L, B, D)
    if self.mode == 'shared':
      return h.reshape(b * hh * ww, d)                           # (BL, D)
    raise AssertionError(self.mode)

  def _unsamples(self, x: Array, shape: Tuple[int, ...]) -> Array:
    b, hh, ww, _ = shape
    if self.mode == 'spatial':
      flat = self._split_first(jnp.transpose(x, (1, 0, 2)))      # (B, L, .)
      return flat.reshape(b, hh, ww, x.shape[-1])
    return x.reshape(b, hh, ww, x.shape[-1])

  def _per_image(self, y: Array, b: int) -> Array:
    """Sample-layout coefficients -> `(B, L, Q)` (`(B, Q)` if `global`)."""
    if self.mode == 'spatial':
      return jnp.swapaxes(y, 0, 1)
    if self.mode == 'shared':
      return y.reshape(b, -1, y.shape[-1])
    return y

  def _per_sample(self, y: Array) -> Array:
    """Inverse of `_per_image`."""
    if self.mode == 'spatial':
      return jnp.swapaxes(y, 0, 1)
    if self.mode == 'shared':
      return y.reshape(-1, y.shape[-1])
    return y

  @property
  def quantizes(self) -> bool:
    """Whether eval reconstructs from quantized coefficients."""
    bits.check_coefficient_quantization(self.coefficient_bits,
                                        self.coefficient_bit_budget)
    return (self.coefficient_bit_budget is not None
            or self.coefficient_bits != bits.FLOAT_BITS)

  def _quantize(self, y: Array, variances: Array, locations: int
                ) -> Tuple[Array, Array, Array]:
    """Quantizes per-image coefficients `y` (`(B, L, Q)` or `(B, Q)`).

    Returns:
      `(y_hat, symbols, symbol_bits)`; `symbol_bits` has one image's shape.
    """
    sigma = jnp.sqrt(jnp.maximum(variances, 0.0))
    if self.mode == 'shared':
      # One variance per component, but the budget is per image: allocate
      # over every location's copy (they may differ by a bit).
      sigma = jnp.broadcast_to(sigma, (locations,) + sigma.shape)
    if self.coefficient_bit_budget is not None:
      nbits = bits.allocate_bits(jnp.square(sigma),
                                 self.coefficient_bit_budget)
    else:
      nbits = jnp.full(sigma.shape, self.coefficient_bits, jnp.int32)
    symbols, y_hat = bits.quantize(y, sigma, nbits)
    return y_hat, symbols, nbits

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None,
               coefficient_shift: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    if self.mode not in PCA_MODES:
      raise ValueError(f'config.model.bottleneck.mode={self.mode!r}; '
                       f'choose one of {PCA_MODES}.')
    if self.tracker not in PCA_TRACKERS:
      raise ValueError(f'config.model.bottleneck.tracker={self.tracker!r}; '
                       f'choose one of {PCA_TRACKERS}.')
    in_dtype = h.dtype
    h = h.astype(jnp.float32)
    b, hh, ww, d = h.shape
    q = self.num_components

    if self.mode == 'global':
      flat = h.reshape(b, hh * ww * d)
      if self.global_dim is not None:
        # The reference's mapper and its inverse (Linear-GELU-Linear).
        hid_in = max(64, min(4 * self.global_dim, 1024))
        hid_out = max(64, min(4 * flat.shape[-1], 1024))
        flat = nn.Dense(self.global_dim, name='map_out')(
            nn.gelu(nn.Dense(hid_in, name='map_in')(flat), approximate=False))
      x = flat                                                   # (B, N)
      problem_shape: Tuple[int, ...] = ()
    else:
      x = self._samples(h)
      problem_shape = x.shape[:-2]
    dim = x.shape[-1]
    if q > dim:
      raise ValueError(
          f'config.model.bottleneck.num_components={q} exceeds the dimension '
          f'{dim} that the {self.mode!r} PCA sees.')

    def init_basis():
      key = self.make_rng('params')
      base = pca.random_orthonormal(key, (dim, q))
      return jnp.broadcast_to(base, problem_shape + (dim, q))

    basis = self.variable('pca', 'basis', init_basis)
    mean = self.variable('pca', 'mean',
                         lambda: jnp.zeros(problem_shape + (dim,), jnp.float32))
    fade_norm = self.variable('pca', 'fade_norm',
                              lambda: jnp.zeros(problem_shape, jnp.float32))
    var = self.variable('pca', 'coef_var',
                        lambda: jnp.zeros(problem_shape + (q,), jnp.float32))
    var_norm = self.variable('pca', 'coef_var_norm',
                             lambda: jnp.zeros(problem_shape, jnp.float32))
    count = self.variable('pca', 'count', lambda: jnp.zeros((), jnp.int32))
    forced = self.variable('pca', 'forced_orthonormalizations',
                           lambda: jnp.zeros((), jnp.int32))

    if self.tracker == 'subspace':
      cov = self.variable('pca', 'cov', lambda: jnp.zeros(
          problem_shape + (dim, dim), jnp.float32))
      cov_norm = self.variable('pca', 'cov_norm',
                               lambda: jnp.zeros(problem_shape, jnp.float32))

    stats: Aux = {}
    if train and not self.is_initializing() and self.tracker == 'subspace':
      xs = jax.lax.stop_gradient(x)
      mu, s = pca.fade_mean(mean.value, fade_norm.value,
                            jnp.mean(xs, axis=-2), self.alpha)
      xc = xs - mu[..., None, :]
      cov.value, cov_norm.value = pca.covariance_update(
          cov.value, cov_norm.value, xc, self.covariance_alpha)
      new_basis, _ = pca.subspace_iteration(cov.value, basis.value,
                                            self.subspace_iterations)
      moved = new_basis - basis.value
      basis.value, mean.value, fade_norm.value = new_basis, mu, s
      count.value = count.value + 1
      stats['pca_update_norm'] = jnp.sqrt(jnp.mean(
          jnp.sum(jnp.square(moved), axis=(-2, -1))))
    elif train and not self.is_initializing():
      xs = jax.lax.stop_gradient(x)
      batch_mean = jnp.mean(xs, axis=-2)
      mu, s = pca.fade_mean(mean.value, fade_norm.value, batch_mean, self.alpha)
      xc = xs - mu[..., None, :]
      if self.tracker == 'sanger':
        raw_delta = pca.normalized_sanger_delta(basis.value, xc, var.value)
      else:
        raw_delta = pca.sanger_delta(basis.value, xc)
      delta = pca.clip_update(raw_delta, self.max_update_norm)
      eta = self.learning_rate if self.learning_rate is not None else lr
      if eta is None:
        raise ValueError(
            'PCABottleneck with learning_rate=None needs the optimizer lr '
            'passed as `lr` in training.')
      new_basis = basis.value + jnp.asarray(eta, jnp.float32) * delta
      new_count = count.value + 1
      every = self.orthonormalize_every or q
      scheduled = new_count % every == 0
      if self.orthonormality_tolerance is not None:
        # Drift check between scheduled re-orthonormalisations.
        drifted = jax.lax.cond(
            (new_count % self.orthonormality_check_every == 0) & ~scheduled,
            lambda c: pca.orthonormality_error(c)
            > self.orthonormality_tolerance,
            lambda c: jnp.zeros((), bool), new_basis)
        forced.value = forced.value + drifted.astype(jnp.int32)
        scheduled = scheduled | drifted
      # On several devices (split or replicated basis): a fixed Newton-Schulz
      # count (pca.orthonormalize).
      ortho = functools.partial(
          pca.orthonormalize,
          fixed_iterations=(self.sample_sharding is not None
                            or jax.device_count() > 1))
      new_basis = jax.lax.cond(scheduled, ortho, lambda c: c, new_basis)
      basis.value, mean.value, fade_norm.value = new_basis, mu, s
      count.value = new_count
      raw_norm = jnp.sqrt(jnp.sum(jnp.square(raw_delta), axis=(-2, -1)))
      # RMS over problems of the Sanger step before the clip, and the share of
      # problems (locations) whose step the clip shortened.
      stats['pca_update_norm'] = jnp.sqrt(jnp.mean(jnp.square(raw_norm)))
      stats['pca_clipped_fraction'] = (
          jnp.mean((raw_norm > self.max_update_norm).astype(jnp.float32))
          if self.max_update_norm is not None else jnp.zeros(()))

    c = jax.lax.stop_gradient(basis.value)
    mu = jax.lax.stop_gradient(mean.value)
    coeffs, x_hat = pca.project(x, c, mu)
    if train and not self.is_initializing():
      # Running variance of each coefficient: the projection's coefficients
      # are those of the centred batch on the updated basis.
      batch_var = jnp.mean(jnp.square(jax.lax.stop_gradient(coeffs)), axis=-2)
      var.value, var_norm.value = pca.fade_mean(
          var.value, var_norm.value, batch_var, self.variance_alpha)
    # At eval, the samples as the PCA sees them (`(L, B, D)`, `(B L, D)` or
    # `(B, N)`, after the `global_dim` map): the fidelity measures of
    # `analysis.pca_fidelity` compare the basis with their exact PCA.
    eval_extra: Aux = {} if train else {'pca_input': x}
    if not train and (self.quantizes or coefficient_shift is not None):
      # Reconstruct from what would be sent: the decoder then sees exactly
      # the latent whose size bits.latent_bits reports.
      y = self._per_image(coeffs, b)
      if self.quantizes:
        y, symbols, nbits = self._quantize(
            y, jax.lax.stop_gradient(var.value), hh * ww)
        image_shape = (hh, ww, q) if self.mode != 'global' else (q,)
        eval_extra.update(symbols=symbols.reshape((b,) + image_shape),
                          symbol_bits=nbits.reshape(image_shape))
      if coefficient_shift is not None:
        full = (b, hh, ww, q) if self.mode != 'global' else (b, q)
        y = y + jnp.broadcast_to(jnp.asarray(coefficient_shift, jnp.float32),
                                 full).reshape(y.shape)
      x_hat = pca.reconstruct(self._per_sample(y), c, mu)

    if self.mode == 'global':
      if self.global_dim is not None:
        x_hat = nn.Dense(hh * ww * d, name='unmap_out')(
            nn.gelu(nn.Dense(hid_out, name='unmap_in')(x_hat),
                    approximate=False))
      h_hat = x_hat.reshape(b, hh, ww, d)
      coefficients = coeffs                                       # (B, Q)
    else:
      h_hat = self._unsamples(x_hat, h.shape)
      coefficients = self._unsamples(coeffs, h.shape[:-1] + (q,))  # (B,H,W,Q)

    aux = {'loss': jnp.zeros((), jnp.float32), 'coefficients': coefficients,
           **stats, **eval_extra}
    return h_hat.astype(in_dtype), aux


# ---------------------------------------------------------------------------
# Baselines (issue 4). Each is selected by `config.model.bottleneck.kind`;
# the discrete ones return `codes`, one int32 index per latent location, and
# batch statistics (`codebook_usage`, `perplexity`) that the trainer logs.
# Distances and codebook updates are always float32.
# ---------------------------------------------------------------------------


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


def _batch_code_stats(codes: Array, num_codes: int) -> Aux:
  hist = codebook_metrics.code_histogram(codes, num_codes)
  return {'codebook_usage': codebook_metrics.usage(hist),
          'perplexity': codebook_metrics.perplexity(hist)}


def _straight_through(z: Array, q: Array) -> Array:
  """`z + sg(q - z)`: forward value `q`, gradient of the identity to `z`."""
  return z + jax.lax.stop_gradient(q - z)


def _flatten(h: Array) -> Tuple[Array, Tuple[int, ...]]:
  return h.reshape(-1, h.shape[-1]), h.shape[:-1]


@register('vq')
class VQBottleneck(nn.Module):
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
  codebook_size: int = 1024
  beta: float = 0.25
  legacy_beta: bool = False

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    in_dtype = h.dtype
    z = h.astype(jnp.float32)
    codebook = self.param('codebook', _variance_scaling_uniform,
                          (self.codebook_size, z.shape[-1]))
    flat, lead = _flatten(z)
    codes = nearest_code(jax.lax.stop_gradient(flat), codebook)
    e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
    loss, cb, commit = losses.vq_loss(z, e, self.beta, self.legacy_beta)
    aux = {'loss': loss, 'codebook_loss': cb, 'commitment_loss': commit,
           'codes': codes.reshape(lead), 'codebook': codebook,
           **_batch_code_stats(codes, self.codebook_size)}
    return _straight_through(z, e).astype(in_dtype), aux


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
class EMAVQBottleneck(nn.Module):
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
  codebook_size: int = 1024
  beta: float = 0.25
  decay: float = 0.99
  eps: float = 1e-5
  dead_code_threshold: Optional[float] = None

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del lr
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

    flat, lead = _flatten(z)
    flat_sg = jax.lax.stop_gradient(flat)
    codebook = jax.lax.stop_gradient(embedding.value)
    codes = nearest_code(flat_sg, codebook)
    e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
    commit = jnp.mean(jnp.square(z - e))
    aux = {'loss': self.beta * commit, 'commitment_loss': commit,
           'codes': codes.reshape(lead), 'codebook': codebook,
           **_batch_code_stats(codes, k)}

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
    return _straight_through(z, e).astype(in_dtype), aux


@register('simvq')
class SimVQBottleneck(nn.Module):
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
  codebook_size: int = 1024
  beta: float = 0.25
  legacy_beta: bool = False

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
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
    flat, lead = _flatten(z)
    codes = nearest_code(jax.lax.stop_gradient(flat), codebook)
    e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
    loss, cb, commit = losses.vq_loss(z, e, self.beta, self.legacy_beta)
    aux = {'loss': loss, 'codebook_loss': cb, 'commitment_loss': commit,
           'codes': codes.reshape(lead), 'codebook': codebook,
           **_batch_code_stats(codes, k)}
    return _straight_through(z, e).astype(in_dtype), aux


def _l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1,
                                               keepdims=True), eps * eps))


@register('vqgan_fc')
class FactorizedVQBottleneck(nn.Module):
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
  codebook_size: int = 1024
  lookup_dim: int = 8
  beta: float = 0.25
  legacy_beta: bool = False

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    in_dtype = h.dtype
    d = h.shape[-1]
    z = nn.Dense(self.lookup_dim, name='proj_in', dtype=jnp.float32)(
        h.astype(jnp.float32))
    z = _l2_normalize(z)
    codebook = _l2_normalize(self.param(
        'codebook', nn.initializers.normal(1.0),
        (self.codebook_size, self.lookup_dim), jnp.float32))
    flat, lead = _flatten(z)
    codes = nearest_code(jax.lax.stop_gradient(flat), codebook)
    e = jnp.take(codebook, codes, axis=0).reshape(z.shape)
    loss, cb, commit = losses.vq_loss(z, e, self.beta, self.legacy_beta)
    z_q = nn.Dense(d, name='proj_out', dtype=jnp.float32)(
        _straight_through(z, e))
    aux = {'loss': loss, 'codebook_loss': cb, 'commitment_loss': commit,
           'codes': codes.reshape(lead), 'codebook': codebook,
           **_batch_code_stats(codes, self.codebook_size)}
    return z_q.astype(in_dtype), aux


def fsq_bound(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Array:
  """FSQ's bounding function: channel i lands in `L_i` integer bins.

  `tanh(z + shift) * half_l - offset` with `half_l = (L - 1)(1 - eps) / 2`,
  `offset = 0.5` for even L (so that rounding gives L values,
  `-L/2 .. L/2 - 1`) and 0 for odd L (`-(L-1)/2 .. (L-1)/2`, symmetric), and
  `shift = tan(offset / half_l)`, exactly as the paper's reference code
  (google-research `fsq/fsq.ipynb`). Every L >= 2 gives a finite, strictly
  increasing map onto an open interval holding exactly those L integers;
  `atanh(offset / half_l)` (which would make `bound(0)` exactly 0) is NaN at
  L = 2, where `offset / half_l = 0.5 / 0.4995 > 1`.
  """
  lv = jnp.asarray(levels, jnp.float32)
  half_l = (lv - 1.0) * (1.0 - eps) / 2.0
  offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
  shift = jnp.tan(offset / half_l)
  return jnp.tanh(z + shift) * half_l - offset


def _fsq_half_width(levels: Sequence[int]) -> Array:
  return jnp.asarray([l // 2 for l in levels], jnp.float32)


def _fsq_basis(levels: Sequence[int]) -> Array:
  basis, acc = [], 1
  for l in levels:
    basis.append(acc)
    acc *= l
  return jnp.asarray(basis, jnp.int32)


def fsq_quantize(z: Array, levels: Sequence[int]) -> Array:
  """Bound, round (straight-through) and scale into [-1, 1]."""
  bounded = fsq_bound(z.astype(jnp.float32), levels)
  return _straight_through(bounded, jnp.round(bounded)) / _fsq_half_width(
      levels)


def fsq_codes_to_indices(codes: Array, levels: Sequence[int]) -> Array:
  """Quantized codes in [-1, 1] `(..., len(levels))` -> mixed-radix index."""
  half = _fsq_half_width(levels)
  digits = jnp.round(codes * half + half).astype(jnp.int32)
  return jnp.sum(digits * _fsq_basis(levels), axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(indices: Array, levels: Sequence[int]) -> Array:
  """Mixed-radix index -> quantized codes in [-1, 1], `(..., len(levels))`."""
  lv = jnp.asarray(levels, jnp.int32)
  digits = (indices[..., None] // _fsq_basis(levels)) % lv
  half = _fsq_half_width(levels)
  return (digits.astype(jnp.float32) - half) / half


@register('fsq')
class FSQBottleneck(nn.Module):
  """Finite scalar quantization (Mentzer et al. 2023).

  Each location is mapped to `len(levels)` channels (a linear layer, skipped
  when D equals that), each bounded by `fsq_bound` and rounded with a
  straight-through gradient; the implicit codebook has `prod(levels)` codes
  and `codes` is the mixed-radix index. No auxiliary loss.

  Attributes:
    levels: number of values per channel, e.g. (8, 5, 5, 5) (about 2^10
      codes) or (8, 8, 8, 6, 5) (2^14).
  """
  levels: Sequence[int] = (8, 5, 5, 5)

  @property
  def num_codes(self) -> int:
    n = 1
    for l in self.levels:
      n *= int(l)
    return n

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    levels = tuple(int(l) for l in self.levels)
    in_dtype = h.dtype
    d = h.shape[-1]
    z = h.astype(jnp.float32)
    project = d != len(levels)
    if project:
      z = nn.Dense(len(levels), name='proj_in', dtype=jnp.float32)(z)
    q = fsq_quantize(z, levels)
    indices = fsq_codes_to_indices(jax.lax.stop_gradient(q), levels)
    out = nn.Dense(d, name='proj_out', dtype=jnp.float32)(q) if project else q
    aux = {'loss': jnp.zeros((), jnp.float32), 'codes': indices,
           **_batch_code_stats(indices, self.num_codes)}
    return out.astype(in_dtype), aux


def lfq_codebook(code_dim: int) -> Array:
  """All `2^d` LFQ codes as `(2^d, d)` float32 sign vectors; bit i of the
  index is channel i being positive."""
  idx = jnp.arange(2 ** code_dim, dtype=jnp.int32)
  bits = (idx[:, None] >> jnp.arange(code_dim, dtype=jnp.int32)) & 1
  return bits.astype(jnp.float32) * 2.0 - 1.0


@register('lfq')
class LFQBottleneck(nn.Module):
  """Lookup-free quantization (MAGVIT-v2, Yu et al. 2023).

  Each location is mapped to `code_dim` channels (a linear layer, skipped
  when D equals it) and each channel quantized to its sign, +-1, with a
  straight-through gradient; the index is the binary number of the signs.
  Loss: `entropy_weight * (per-sample entropy - batch entropy)` of the soft
  assignment to all `2^d` codes (`losses.lfq_entropy_terms`; it is
  materialised, so d is limited to 16) plus `commitment_weight *
  ||z - sg(q)||^2`.

  Attributes:
    code_dim: d, bits per location.
    entropy_weight: 0.1.
    commitment_weight: 0.25.
    inv_temperature: sharpness of the soft assignment in the entropy (100).
  """
  code_dim: int = 10
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  inv_temperature: float = 100.0

  @property
  def num_codes(self) -> int:
    return 2 ** int(self.code_dim)

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    in_dtype = h.dtype
    d = h.shape[-1]
    z = h.astype(jnp.float32)
    project = d != self.code_dim
    if project:
      z = nn.Dense(self.code_dim, name='proj_in', dtype=jnp.float32)(z)
    q = jnp.where(z > 0, 1.0, -1.0)
    bits = (z > 0).astype(jnp.int32)
    indices = jnp.sum(bits << jnp.arange(self.code_dim, dtype=jnp.int32),
                      axis=-1).astype(jnp.int32)
    flat, _ = _flatten(z)
    per_sample, batch = losses.lfq_entropy_terms(
        flat, lfq_codebook(self.code_dim), self.inv_temperature)
    ent = per_sample - batch
    commit = jnp.mean(jnp.square(z - jax.lax.stop_gradient(q)))
    z_q = _straight_through(z, q)
    out = nn.Dense(d, name='proj_out', dtype=jnp.float32)(z_q) if project \
        else z_q
    aux = {'loss': self.entropy_weight * ent + self.commitment_weight * commit,
           'entropy_loss': ent, 'per_sample_entropy': per_sample,
           'batch_entropy': batch, 'commitment_loss': commit,
           'codes': indices, **_batch_code_stats(indices, self.num_codes)}
    return out.astype(in_dtype), aux


@register('kl')
class KLBottleneck(nn.Module):
  """Diagonal Gaussian posterior (AutoencoderKL, Rombach et al. 2022).

  A 1x1 conv gives the mean and log-variance (clamped to [-30, 20]) of
  `latent_channels` channels per location; training decodes a
  reparameterised sample (rng stream `sample`), eval decodes the mean; a 1x1
  conv maps back to D. Loss `kl_weight * KL(q || N(0, I))`, the KL summed
  over the latent of an image and averaged over the batch: latent
  diffusion's KL term, in its units (against a reconstruction loss summed
  over each image's pixels). The trainer, whose reconstruction loss is a
  per-element mean, divides this term by `H * W * C` of the image
  (`train.bottleneck_loss_scale`), so `kl_weight` means what it means in
  latent diffusion at every resolution.

  Attributes:
    latent_channels: channels of the Gaussian latent; None: D.
    kl_weight: 1e-6.
  """
  latent_channels: Optional[int] = None
  kl_weight: float = 1e-6

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del lr
    in_dtype = h.dtype
    d = h.shape[-1]
    c = self.latent_channels or d
    moments = nn.Conv(2 * c, (1, 1), name='moments', dtype=jnp.float32)(
        h.astype(jnp.float32))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    std = jnp.exp(0.5 * logvar)
    if train and not self.is_initializing():
      noise = jax.random.normal(self.make_rng('sample'), mean.shape,
                                jnp.float32)
      sample = mean + std * noise
    else:
      sample = mean
    kl = losses.gaussian_kl(mean, logvar)
    out = nn.Conv(d, (1, 1), name='post', dtype=jnp.float32)(sample)
    aux = {'loss': self.kl_weight * kl, 'kl': kl,
           'posterior_std': jnp.mean(std), 'coefficients': mean}
    return out.astype(in_dtype), aux
