"""The online PCA layer (PCA-VAE, arXiv 2602.18904; docs/design.md §3)."""

import functools
import time
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from pcavae import analysis
from pcavae import checks
from pcavae.models import coding
from pcavae.models import pca
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import Coding
from pcavae.models.bottlenecks.base import CodingStream
from pcavae.models.bottlenecks.base import FIXED
from pcavae.models.bottlenecks.base import KEY
from pcavae.models.bottlenecks.base import LatentShape
from pcavae.models.bottlenecks.base import register

PCA_MODES = ('spatial', 'shared', 'global')
PCA_TRACKERS = ('reference', 'sanger', 'subspace')
# How a drifted basis is made orthonormal again (`orthonormalization`).
PCA_ORTHONORMALIZATIONS = ('symmetric', 'qr')
# The `subspace` tracker's covariance state (problems x dim x dim float32)
# above this many bytes is refused: it is checkpointed and updated per step.
MAX_SUBSPACE_STATE_BYTES = 2 ** 31
# Saved with the spectra (`diagnostics`): the fidelity values' names.
FIDELITY_PREFIX = 'pca_fidelity_'


def fidelity_history(saved: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The fidelity values over the evals, `{'step': (k,), name: (k,)}`, out
  of the diagnostics saved with the spectra (`evaluators.load_saved`): the
  evals that measured them (empty without any)."""
  names = [k for k in saved if k.startswith(FIDELITY_PREFIX)]
  if not names:
    return {}
  rows = np.any([np.isfinite(saved[k]) for k in names], axis=0)
  if not rows.any():
    return {}
  out = {'step': np.asarray(saved['step'])[rows]}
  for k in names:
    out[k[len(FIDELITY_PREFIX):]] = np.asarray(saved[k], np.float64)[rows]
  return out


class GlobalMapper(nn.Module):
  """The reference's map of the `global` mode's flattened latent to
  `global_dim` dimensions and its inverse (`embedding_dim` with
  `keep_shape=False`): Linear-GELU-Linear each way, `map_in`/`map_out` to
  `features`, `unmap_in`/`unmap_out` back (`inverse=True`)."""

  @nn.compact
  def __call__(self, x: Array, features: int, inverse: bool = False
               ) -> Array:
    prefix = 'unmap' if inverse else 'map'
    hidden = max(64, min(4 * features, 1024))
    return nn.Dense(features, name=f'{prefix}_out')(
        nn.gelu(nn.Dense(hidden, name=f'{prefix}_in')(x), approximate=False))


class _State:
  """The layer's variables in the `pca` collection (made in `__call__`)."""

  def __init__(self, module: nn.Module, problem_shape: Tuple[int, ...],
               dim: int, q: int):
    def init_basis():
      key = module.make_rng('params')
      base = pca.random_orthonormal(key, (dim, q))
      return jnp.broadcast_to(base, problem_shape + (dim, q))

    def zeros(shape, dtype=jnp.float32):
      return lambda: jnp.zeros(shape, dtype)

    self.basis = module.variable('pca', 'basis', init_basis)
    self.mean = module.variable('pca', 'mean', zeros(problem_shape + (dim,)))
    self.fade_norm = module.variable('pca', 'fade_norm', zeros(problem_shape))
    self.var = module.variable('pca', 'coef_var', zeros(problem_shape + (q,)))
    self.var_norm = module.variable('pca', 'coef_var_norm',
                                    zeros(problem_shape))
    self.count = module.variable('pca', 'count', zeros((), jnp.int32))
    self.forced = module.variable('pca', 'forced_orthonormalizations',
                                  zeros((), jnp.int32))
    if module.tracker == 'subspace':
      self.cov = module.variable('pca', 'cov', zeros(problem_shape + (dim, dim)))
      self.cov_norm = module.variable('pca', 'cov_norm', zeros(problem_shape))


@register('pca')
class PCABottleneck(Bottleneck):
  """Online PCA layer (PCA-VAE, arXiv 2602.18904; docs/design.md §3).

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
      (QR) multiply-adds a step, and 64 MiB of state. Default `sanger` at
      rate 0.1, re-orthonormalised by `qr` after every step (the configs'
      defaults too: `configlib.bottleneck_defaults` reads them from here);
      the reference rule is `tracker='reference', learning_rate=None,
      max_update_norm=0.1, orthonormalize_every=None,
      orthonormalization='symmetric'` (`configs/pcavae.py:reference`).
    learning_rate: Hebbian step size (0.1; the `sanger` tracker is stable
      for rates in (0, 1]); None ties it to the optimizer's current
      learning rate passed as `lr` (the reference's choice).
    max_update_norm: Frobenius clip of each problem's step (reference: 0.1 in
      `spatial` mode, none in `global`). None (default) disables it.
    covariance_alpha: fade factor of the `subspace` tracker's covariance.
    subspace_iterations: orthogonal iterations per step (`subspace`).
    orthonormalize_every: re-orthonormalise every this many updates (1: a
      rate-0.1 step leaves the basis O(0.1) from orthonormal, and C C^T is
      a projector only for an orthonormal C); None: every Q, as in the
      reference.
    orthonormalization: how (`PCA_ORTHONORMALIZATIONS`): `symmetric` (the
      reference's `C (C^T C)^(-1/2)`, `pca.orthonormalize`, the closest
      orthonormal basis) or `qr` (Gram-Schmidt order by Cholesky-QR,
      `pca.orthonormalize_qr`: the order of Sanger's deflation, and about a
      sixth of the cost after a `sanger` step at Q = D, docs/speed.md; the
      default).
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
      (`pcavae.models.coding`); 32 (default) keeps unquantized float coefficients.
    coefficient_bit_budget: at eval, quantize with bits allocated over all
      coefficients of an image by reverse water-filling
      (`coding.allocate_bits`) for this many bits per image; None: off.
      Exclusive with `coefficient_bits` != 32.
    sample_sharding: in `spatial` mode, a sharding of the `(L, B, D)` samples
      split along the location axis (`pcavae.sharding.location_sharding`,
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
  tracker: str = 'sanger'
  learning_rate: Optional[float] = 0.1
  max_update_norm: Optional[float] = None
  orthonormalize_every: Optional[int] = 1
  orthonormalization: str = 'qr'
  global_dim: Optional[int] = None
  variance_alpha: float = 0.99
  orthonormality_tolerance: Optional[float] = 1e-2
  orthonormality_check_every: int = 16
  coefficient_bits: int = coding.FLOAT_BITS
  coefficient_bit_budget: Optional[int] = None
  sample_sharding: Optional[jax.sharding.Sharding] = None
  covariance_alpha: float = 0.99
  subspace_iterations: int = 1

  symbol_key = 'symbols'
  rate_settings = ('bits', 'budget')
  # Training never quantizes the coefficients.
  eval_only_keys = ('coefficient_bits', 'coefficient_bit_budget')
  diagnostic_keys = ('pca_input',)
  state_collection = 'pca'
  nonfinite_hint = ("config.model.bottleneck.learning_rate (the PCA's Hebbian "
                    'rate; unset, it follows config.optimizer.learning_rate) '
                    'or clip it with config.model.bottleneck.max_update_norm')

  def setup(self):
    if self.mode == 'global' and self.global_dim is not None:
      self.mapper = GlobalMapper()
      # Its layers keep the names they had inline (`map_in`, ...).
      nn.share_scope(self, self.mapper)

  # -- facts -----------------------------------------------------------------

  def _check_choices(self) -> None:
    checks.one_of(self.mode, KEY + 'mode', PCA_MODES)
    checks.one_of(self.tracker, KEY + 'tracker', PCA_TRACKERS)
    checks.one_of(self.orthonormalization, KEY + 'orthonormalization',
                  PCA_ORTHONORMALIZATIONS)

  def _check_components(self, dim: int, what: str) -> None:
    q = self.num_components
    if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
      raise ValueError(f'{KEY}num_components={q!r} must be a positive '
                       'integer.')
    if q > dim:
      raise ValueError(f'{KEY}num_components={q} (Q) exceeds {what} = {dim}; '
                       'Q <= D is required.')

  def _sample_dim(self, latent_shape: LatentShape) -> Tuple[int, str]:
    """`(dim, what it is)` of the samples the PCA sees."""
    h, w, d = latent_shape
    if self.mode != 'global':
      return d, 'config.model.latent_dim (D)'
    if self.global_dim:
      return self.global_dim, f'{KEY}global_dim'
    return h * w * d, f'the flattened latent h*w*D = {h}*{w}*{d}'

  def validate(self, latent_shape: LatentShape) -> None:
    checks.one_of(self.mode, KEY + 'mode', PCA_MODES)
    dim, what = self._sample_dim(latent_shape)
    self._check_components(dim, what)
    self._validate_tracker(dim, self.num_tokens(latent_shape)
                           if self.mode == 'spatial' else 1)
    coding.check_coefficient_quantization(
        self.coefficient_bits, self.coefficient_bit_budget,
        self.num_tokens(latent_shape) * self.num_components)

  def _validate_tracker(self, dim: int, problems: int) -> None:
    """`tracker`, `learning_rate`, `max_update_norm` and the `subspace` keys."""
    checks.one_of(self.tracker, KEY + 'tracker', PCA_TRACKERS)
    checks.one_of(self.orthonormalization, KEY + 'orthonormalization',
                  PCA_ORTHONORMALIZATIONS)
    rate = self.learning_rate
    if rate is not None and not (isinstance(rate, (int, float)) and rate > 0):
      raise ValueError(f'{KEY}learning_rate={rate!r} must be a positive '
                       'number (or None: tied to the optimizer).')
    if self.tracker == 'sanger' and rate is not None and rate > 1:
      raise ValueError(f'{KEY}learning_rate={rate!r}: the sanger tracker is '
                       'stable for rates in (0, 1].')
    clip = self.max_update_norm
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
      raise ValueError(f'{KEY}max_update_norm={clip!r} must be positive (or '
                       'None: no clip).')
    alpha = self.covariance_alpha
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
      raise ValueError(f'{KEY}covariance_alpha={alpha!r} must be in (0, 1].')
    iters = self.subspace_iterations
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
      raise ValueError(f'{KEY}subspace_iterations={iters!r} must be an '
                       'integer >= 1.')
    if self.tracker == 'subspace':
      state = problems * dim * dim * 4
      if state > MAX_SUBSPACE_STATE_BYTES:
        raise ValueError(
            f'{KEY}tracker=subspace keeps a {problems} x {dim} x {dim} '
            f'covariance ({state / 2 ** 30:.1f} GiB); use sanger, or a '
            'smaller dimension (global_dim, latent_dim).')

  def num_tokens(self, latent_shape: LatentShape) -> int:
    """Locations per image; 1 in `global` mode, whose latent is one vector."""
    if self.mode == 'global':
      return 1
    return super().num_tokens(latent_shape)

  @property
  def coefficient_quantization(self) -> Optional[Tuple[str, int]]:
    """How eval quantizes the coefficients: None (unquantized 32-bit
    floats), `('fixed', b)` or `('budget', B)`."""
    if self.coefficient_bit_budget is not None:
      return ('budget', int(self.coefficient_bit_budget))
    b = int(self.coefficient_bits)
    return None if b == coding.FLOAT_BITS else ('fixed', b)

  def latent_bits(self, latent_shape: LatentShape) -> int:
    quant = self.coefficient_quantization
    if quant is not None and quant[0] == 'budget':
      return quant[1]  # allocate_bits spends exactly the budget
    return super().latent_bits(latent_shape)

  def bits_per_token(self, latent_dim: int) -> float:
    del latent_dim
    quant = self.coefficient_quantization
    return self.num_components * (coding.FLOAT_BITS if quant is None
                                  else quant[1])

  def check_warmup(self, setting: str) -> None:
    if self.mode == 'global' and self.global_dim:
      raise ValueError(
          f'{setting} with mode=global and global_dim set: the identity '
          'warm-up would skip the untrained global_dim mapper; use '
          'global_dim=None or no warm-up.')

  @property
  def quantizes(self) -> bool:
    """Whether eval reconstructs from quantized coefficients."""
    coding.check_coefficient_quantization(self.coefficient_bits,
                                          self.coefficient_bit_budget)
    return (self.coefficient_bit_budget is not None
            or self.coefficient_bits != coding.FLOAT_BITS)

  def location_sharded(self) -> bool:
    return self.mode == 'spatial'

  # -- coding ----------------------------------------------------------------

  def coding(self, aux: Dict[str, Any]) -> Coding:
    """A stream per bit depth b > 0 of the coefficients, each under the
    fixed quantized-Gaussian table of b bits
    (`coding.gaussian_symbol_probabilities`: the quantizer's step follows
    each coefficient's sigma); at eval each component is its own histogram.
    The decoder needs the bits of each coefficient (`side`)."""
    symbol_bits = np.asarray(aux['symbol_bits'], np.int32)
    component = np.broadcast_to(np.arange(symbol_bits.shape[-1]),
                                symbol_bits.shape)
    streams = tuple(
        CodingStream(symbol_bits == b, FIXED, 2 ** int(b),
                     coding.gaussian_symbol_probabilities(int(b)),
                     groups=component)
        for b in sorted(set(np.unique(symbol_bits).tolist()) - {0}))
    return Coding(symbol_bits.shape, streams, side=symbol_bits)

  def coding_rate(self, latent_shape: LatentShape, bits: Optional[int] = None,
                  budget: Optional[int] = None) -> Tuple[str, int]:
    """`('bits', b)` per coefficient or `('budget', B)` per image (tile):
    the one given, else the run's own quantization."""
    if budget is not None and bits is not None:
      raise ValueError('--budget and --bits are exclusive.')
    if budget is None and bits is None:
      quant = self.coefficient_quantization
      if quant is None:
        raise ValueError(
            'the run keeps 32-bit float coefficients: give --budget=B (bits '
            'per tile) or --bits=b (bits per coefficient).')
      return ('budget', quant[1]) if quant[0] == 'budget' else ('bits',
                                                                quant[1])
    if bits is not None:
      if not 1 <= int(bits) <= coding.MAX_COEFFICIENT_BITS:
        raise ValueError(f'--bits={bits} must lie in '
                         f'1..{coding.MAX_COEFFICIENT_BITS}.')
      return 'bits', int(bits)
    per_tile = self.num_tokens(latent_shape) * int(self.num_components)
    most = per_tile * coding.MAX_COEFFICIENT_BITS
    if not 1 <= int(budget) <= most:
      raise ValueError(f'--budget={budget} (bits per tile) must lie in 1..'
                       f'{most} ({per_tile} coefficients per tile).')
    return 'budget', int(budget)

  def rate_overrides(self, setting: str, value: int) -> Dict[str, Any]:
    return {'coefficient_bits': (value if setting == 'bits'
                                 else coding.FLOAT_BITS),
            'coefficient_bit_budget': value if setting == 'budget' else None}

  # -- eval diagnostics ------------------------------------------------------

  def diagnostic_rows(self, key: str, x: np.ndarray, mask: np.ndarray
                      ) -> np.ndarray:
    """The rows of `pca_input` (`(L, B, D)`, `(B L, D)` or `(B, N)`) of the
    images where `mask` is set."""
    del key
    if x.ndim == 3:                                   # spatial: (L, B, D)
      return x[:, mask]
    per_image = x.shape[0] // mask.shape[0]           # shared: L rows each
    return x[np.repeat(mask, per_image)]

  def diagnostics(self, collections: Dict[str, Any],
                  inputs: Dict[str, List[np.ndarray]]
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, float],
                             Dict[str, float]]:
    """The `pca_coef` spectrum (square roots of the running coefficient
    variances, averaged over locations), the basis' orthonormality error,
    and whether the layer is a PCA of what it sees: `analysis.pca_fidelity`
    of the reference set's samples (one problem per location in `spatial`
    mode), logged as `pca/<name>` and timed as
    `eval/seconds_pca_fidelity`."""
    state = collections.get(self.state_collection)
    spectra, logged, saved = {}, {}, {}
    if state is None:
      return spectra, logged, saved
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      key = path[-1].key
      if key == 'coef_var':
        leaves[key] = np.asarray(leaf, np.float64)
        var = leaves[key].reshape(-1, leaves[key].shape[-1]).mean(0)
        spectra['pca_coef'] = np.sort(np.sqrt(np.maximum(var, 0)))[::-1]
      elif key == 'basis':
        leaves[key] = np.asarray(leaf, np.float64)
        saved['pca_orthonormality_error'] = float(
            pca.orthonormality_error(leaves[key]))
    rows = inputs.get('pca_input')
    if rows and 'basis' in leaves:
      t0 = time.perf_counter()
      # One BLAS thread: many small eigendecompositions (one per location)
      # gain nothing from threads, and OpenBLAS threads next to a loaded
      # CPU spin: 17 s instead of 0.4 s measured for 64 of 64 x 64.
      with threadpoolctl.threadpool_limits(1):
        fidelity = analysis.pca_fidelity(
            np.concatenate(rows, axis=-2), leaves['basis'],
            leaves['coef_var'])
      for k, v in fidelity.items():
        saved[FIDELITY_PREFIX + k] = float(v)
        logged['pca/' + k] = float(v)
      seconds = time.perf_counter() - t0
      saved['seconds_pca_fidelity'] = seconds
      logged['eval/seconds_pca_fidelity'] = seconds
    return spectra, logged, saved

  def diagnostic_figures(self, saved: Dict[str, np.ndarray], num_images: int
                         ) -> Dict[str, np.ndarray]:
    """`pca_fidelity`: the fidelity values over training."""
    from pcavae import viz  # pylint: disable=g-import-not-at-top
    history = fidelity_history(saved)
    if not history:
      return {}
    return {'pca_fidelity': viz.fidelity_plot(
        history, title=f'PCA ({self.mode}, tracker {self.tracker}) vs the '
        f'exact PCA of {num_images} eval images')}

  def health(self, collections: Dict[str, Any]) -> Dict[str, float]:
    """`pca/orthonormality_error` of the basis and the count of
    `pca/forced_orthonormalizations`."""
    out = {}
    state = collections.get(self.state_collection)
    if state is None:
      return out
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      if path[-1].key == 'basis':
        out['pca/orthonormality_error'] = float(
            pca.orthonormality_error(leaf))
      elif path[-1].key == 'forced_orthonormalizations':
        out['pca/forced_orthonormalizations'] = int(leaf)
    return out

  def coefficient_scales(self, latent_hw: Tuple[int, int]) -> Array:
    """Running sigma of each coefficient of one image: `(H, W, Q)`, `(Q,)`
    in `global` mode."""
    var = self.get_variable('pca', 'coef_var')
    sigma = jnp.sqrt(jnp.maximum(var.astype(jnp.float32), 0.0))
    q = sigma.shape[-1]
    if self.mode == 'global':
      return sigma
    hh, ww = latent_hw
    return jnp.broadcast_to(sigma.reshape((hh, ww, q) if sigma.ndim == 2
                                          else (q,)), (hh, ww, q))

  # -- sample layout ---------------------------------------------------------

  def _split_first(self, a: Array) -> Array:
    """Splits the first axis over the devices (`sample_sharding`), if set."""
    if self.sample_sharding is None or self.mode != 'spatial':
      return a
    return jax.lax.with_sharding_constraint(a, self.sample_sharding)

  def _samples(self, h: Array) -> Array:
    """NHWC latent -> `(problems..., n, dim)` samples for the PCA (`global`:
    through the mapper, if any)."""
    b, hh, ww, d = h.shape
    if self.mode == 'spatial':
      # With `sample_sharding`: split by image, then moved (one all-to-all)
      # to split by location. The first constraint keeps XLA from pushing the
      # location split back into the encoder's (H, W) axes.
      flat = self._split_first(h.reshape(b, hh * ww, d))         # (B, L, D)
      return self._split_first(jnp.transpose(flat, (1, 0, 2)))   # (L, B, D)
    if self.mode == 'shared':
      return h.reshape(b * hh * ww, d)                           # (BL, D)
    flat = h.reshape(b, hh * ww * d)                             # (B, N)
    if self.global_dim is not None:
      flat = self.mapper(flat, self.global_dim)
    return flat

  def _unsamples(self, x: Array, shape: Tuple[int, ...]) -> Array:
    """Samples -> `shape` (NHWC); in `global` mode `(B, N)` -> NHWC through
    the inverse mapper, if any."""
    b, hh, ww, _ = shape
    if self.mode == 'spatial':
      flat = self._split_first(jnp.transpose(x, (1, 0, 2)))      # (B, L, .)
      return flat.reshape(b, hh, ww, x.shape[-1])
    if self.mode == 'global' and self.global_dim is not None:
      x = self.mapper(x, hh * ww * shape[-1], inverse=True)
    return x.reshape(b, hh, ww, -1)

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

  # -- the layer -------------------------------------------------------------

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None,
               coefficient_shift: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    self._check_choices()
    in_dtype = h.dtype
    h = h.astype(jnp.float32)
    x = self._samples(h)
    dim = x.shape[-1]
    self._check_components(dim, f'the dimension that the {self.mode!r} PCA '
                           'sees')
    state = _State(self, x.shape[:-2], dim, self.num_components)
    update = train and not self.is_initializing()

    stats: Aux = {}
    if update:
      stats = self._track(state, jax.lax.stop_gradient(x), lr)
    c = jax.lax.stop_gradient(state.basis.value)
    mu = jax.lax.stop_gradient(state.mean.value)
    coeffs, x_hat = pca.project(x, c, mu)
    if update:
      self._track_variances(state, coeffs)
    # At eval, the samples as the PCA sees them (`(L, B, D)`, `(B L, D)` or
    # `(B, N)`, after the `global_dim` map): the fidelity measures of
    # `analysis.pca_fidelity` compare the basis with their exact PCA.
    eval_extra: Aux = {} if train else {'pca_input': x}
    if not train and (self.quantizes or coefficient_shift is not None):
      x_hat, coded = self._eval_coding(coeffs, state, h.shape,
                                       coefficient_shift)
      eval_extra.update(coded)

    h_hat = self._unsamples(x_hat, h.shape)
    if self.mode == 'global':
      coefficients = coeffs                                        # (B, Q)
    else:
      coefficients = self._unsamples(coeffs, h.shape)             # (B,H,W,Q)
    aux = {'loss': jnp.zeros((), jnp.float32), 'coefficients': coefficients,
           **stats, **eval_extra}
    return h_hat.astype(in_dtype), aux

  def _track(self, state: _State, xs: Array, lr: Optional[Array]) -> Aux:
    """One tracker step on the stop-gradient samples `xs`: the running
    mean, then the basis (docs/design.md §3). Returns its statistics."""
    mu, s = pca.fade_mean(state.mean.value, state.fade_norm.value,
                          jnp.mean(xs, axis=-2), self.alpha)
    xc = xs - mu[..., None, :]
    if self.tracker == 'subspace':
      new_basis, stats = self._subspace_step(state, xc)
    else:
      new_basis, stats = self._sanger_step(state, xc, lr)
    state.basis.value, state.mean.value, state.fade_norm.value = (
        new_basis, mu, s)
    state.count.value = state.count.value + 1
    return stats

  def _subspace_step(self, state: _State, xc: Array) -> Tuple[Array, Aux]:
    """Covariance EMA and orthogonal iterations (`pca.subspace_iteration`)."""
    state.cov.value, state.cov_norm.value = pca.covariance_update(
        state.cov.value, state.cov_norm.value, xc, self.covariance_alpha)
    new_basis, _ = pca.subspace_iteration(state.cov.value, state.basis.value,
                                          self.subspace_iterations)
    moved = new_basis - state.basis.value
    return new_basis, {'pca_update_norm': jnp.sqrt(jnp.mean(
        jnp.sum(jnp.square(moved), axis=(-2, -1))))}

  def _sanger_step(self, state: _State, xc: Array, lr: Optional[Array]
                   ) -> Tuple[Array, Aux]:
    """Sanger's rule (`reference` or variance-normalised `sanger`), the
    clip, the step and the scheduled or forced re-orthonormalisation."""
    basis = state.basis.value
    if self.tracker == 'sanger':
      raw_delta = pca.normalized_sanger_delta(basis, xc, state.var.value)
    else:
      raw_delta = pca.sanger_delta(basis, xc)
    delta = pca.clip_update(raw_delta, self.max_update_norm)
    eta = self.learning_rate if self.learning_rate is not None else lr
    if eta is None:
      raise ValueError(
          'PCABottleneck with learning_rate=None needs the optimizer lr '
          'passed as `lr` in training.')
    new_basis = self._orthonormalized(
        state, basis + jnp.asarray(eta, jnp.float32) * delta)
    raw_norm = jnp.sqrt(jnp.sum(jnp.square(raw_delta), axis=(-2, -1)))
    # RMS over problems of the Sanger step before the clip, and the share of
    # problems (locations) whose step the clip shortened.
    return new_basis, {
        'pca_update_norm': jnp.sqrt(jnp.mean(jnp.square(raw_norm))),
        'pca_clipped_fraction': (
            jnp.mean((raw_norm > self.max_update_norm).astype(jnp.float32))
            if self.max_update_norm is not None else jnp.zeros(()))}

  def _orthonormalized(self, state: _State, new_basis: Array) -> Array:
    """Re-orthonormalises every `orthonormalize_every` updates (default Q),
    and between them when the drift check finds the error too large."""
    new_count = state.count.value + 1
    every = self.orthonormalize_every or self.num_components
    scheduled = new_count % every == 0
    if self.orthonormality_tolerance is not None:
      # Drift check between scheduled re-orthonormalisations.
      drifted = jax.lax.cond(
          (new_count % self.orthonormality_check_every == 0) & ~scheduled,
          lambda c: pca.orthonormality_error(c)
          > self.orthonormality_tolerance,
          lambda c: jnp.zeros((), bool), new_basis)
      state.forced.value = state.forced.value + drifted.astype(jnp.int32)
      scheduled = scheduled | drifted
    # On several devices (split or replicated basis): a fixed Newton-Schulz
    # count (pca.orthonormalize; the fallback of pca.orthonormalize_qr).
    ortho = functools.partial(
        pca.orthonormalize_qr if self.orthonormalization == 'qr'
        else pca.orthonormalize,
        fixed_iterations=(self.sample_sharding is not None
                          or jax.device_count() > 1))
    return jax.lax.cond(scheduled, ortho, lambda c: c, new_basis)

  def _track_variances(self, state: _State, coeffs: Array) -> None:
    """Running variance of each coefficient: the projection's coefficients
    are those of the centred batch on the updated basis."""
    batch_var = jnp.mean(jnp.square(jax.lax.stop_gradient(coeffs)), axis=-2)
    state.var.value, state.var_norm.value = pca.fade_mean(
        state.var.value, state.var_norm.value, batch_var, self.variance_alpha)

  def _eval_coding(self, coeffs: Array, state: _State,
                   shape: Tuple[int, ...], coefficient_shift: Optional[Array]
                   ) -> Tuple[Array, Aux]:
    """Reconstructs from what would be sent (quantized, shifted
    coefficients): the decoder then sees exactly the latent whose size
    `bits.latent_bits` reports. Returns `(samples, symbols and bits)`."""
    b, hh, ww, _ = shape
    q = self.num_components
    y = self._per_image(coeffs, b)
    coded: Aux = {}
    if self.quantizes:
      y, symbols, nbits = self._quantize(
          y, jax.lax.stop_gradient(state.var.value), hh * ww)
      image_shape = (hh, ww, q) if self.mode != 'global' else (q,)
      coded.update(symbols=symbols.reshape((b,) + image_shape),
                   symbol_bits=nbits.reshape(image_shape))
    if coefficient_shift is not None:
      full = (b, hh, ww, q) if self.mode != 'global' else (b, q)
      y = y + jnp.broadcast_to(jnp.asarray(coefficient_shift, jnp.float32),
                               full).reshape(y.shape)
    c = jax.lax.stop_gradient(state.basis.value)
    mu = jax.lax.stop_gradient(state.mean.value)
    return pca.reconstruct(self._per_sample(y), c, mu), coded

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
      nbits = coding.allocate_bits(jnp.square(sigma),
                                   self.coefficient_bit_budget)
    else:
      nbits = jnp.full(sigma.shape, self.coefficient_bits, jnp.int32)
    symbols, y_hat = coding.quantize(y, sigma, nbits)
    return y_hat, symbols, nbits

  # -- methods run through `apply(method=...)` -------------------------------

  def warmup_init(self, latents: Array, key: Array, num_batches: int,
                  kmeans_iters: int) -> Aux:
    """Basis, mean and coefficient variances <- an exact PCA of the latents
    (`pca.exact_pca`, per location in `spatial` mode)."""
    del key, num_batches, kmeans_iters
    basis = self.get_variable('pca', 'basis')
    x = self._samples(latents.astype(jnp.float32))
    mean, new_basis, variances = pca.exact_pca(x, basis.shape[-1])
    total = jnp.sum(jnp.var(x, axis=-2), axis=-1)
    for name, value in (('basis', new_basis), ('mean', mean),
                        ('coef_var', variances)):
      self.put_variable('pca', name, value.astype(
          self.get_variable('pca', name).dtype))
    return {'warmup/pca_explained_variance': jnp.mean(
        jnp.sum(variances, -1) / jnp.maximum(total, 1e-12)),
            'warmup/pca_samples': jnp.asarray(x.shape[-2], jnp.float32)}

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    """The eval output from the quantized symbols `(B, H, W, Q)` (`(B, Q)`
    in `global` mode) and the bits of each coefficient of one image:
    dequantize with each coefficient's running sigma, reconstruct
    `y C^T + mu` per problem and (`global`) unmap. `global` mode returns
    the flat `(B, N)` latent (the layer cannot tell H, W and D apart)."""
    symbol_bits = side
    basis = self.get_variable('pca', 'basis')
    mean = self.get_variable('pca', 'mean')
    sigma = jnp.sqrt(jnp.maximum(self.get_variable('pca', 'coef_var'), 0.0))
    b = symbols.shape[0]
    if self.mode != 'global':
      sigma = jnp.broadcast_to(sigma, (symbol_bits[..., 0].size,
                                       sigma.shape[-1]))
      sigma = sigma.reshape(symbol_bits.shape)
    y = coding.dequantize(symbols, sigma, symbol_bits)
    if self.mode == 'global':
      x = pca.reconstruct(y, basis, mean)                          # (B, N)
      if self.global_dim is not None:
        flat_dim = self.get_variable('params', 'unmap_out')['kernel'].shape[-1]
        x = self.mapper(x, flat_dim, inverse=True)
      return x
    x = pca.reconstruct(self._per_sample(y.reshape(b, -1, y.shape[-1])),
                        basis, mean)
    return self._unsamples(x, symbols.shape[:-1] + (x.shape[-1],))
