"""Latent bit accounting and coefficient quantization (DESIGN.md §3, §6).

Bits per image
--------------
`latent_bits(config)` is the size of one image's latent as the model
reconstructs it at eval, with `tokens` the number of latent locations
(`h * w`; 1 for the PCA `global` mode, whose latent is one vector):

  vq, ema_vq, simvq, vqgan_fc   tokens * log2(K)
  fsq                           tokens * sum_i log2(L_i)
  lfq                           tokens * d
  kl                            tokens * latent_channels * 32
  identity                      tokens * D * 32
  pca, coefficient_bits = b     tokens * Q * b   (b = 32: unquantized floats)
  pca, coefficient_bit_budget   the budget B, bits per image (spent exactly)

Non-integer totals (K or L_i not powers of two) are rounded up to whole bits.
Continuous latents are counted at 32 bits per float, as the PCA-VAE paper
counts its coefficients: an upper bound, not a coded size. These are the
*nominal* (fixed-length code) sizes; `entropy_bits` and `SymbolCounts` give
the size after ideal entropy coding of the same symbols (below).

Coefficient quantization (PCA, eval only)
-----------------------------------------
With `config.model.bottleneck.coefficient_bits = b` (0..16; 32, the default,
turns quantization off) or `coefficient_bit_budget = B` the PCA bottleneck,
at `train=False`, replaces each coefficient y by a uniform scalar quantizer's
output before reconstructing `y C^T + mu`, so every eval metric, grid and
`pcavae.reconstruct` output is made from the quantized latent whose size
`latent_bits` reports. Training never quantizes (the paper's model).

* Quantizer: midrise uniform, `2^b` levels, step `s_b * sigma` with sigma
  the coefficient's running standard deviation (`pca` collection `coef_var`;
  one per location and component in `spatial` mode) and `s_b` the step that
  minimises the MSE of a `2^b`-level uniform quantizer on a unit Gaussian
  (`gaussian_uniform_step`; e.g. 1.596, 0.996, 0.586, 0.335 for b = 1..4,
  Max 1960). Values beyond `+-2^(b-1) s_b sigma` are clipped to the outer
  level; inside, the error is at most half a step. b = 0 sends nothing and
  reconstructs the coefficient as 0, i.e. as the mean.
* Budget: `B` bits per image over all `tokens * Q` coefficients of an image,
  allocated by `allocate_bits`: each bit goes to the coefficient whose
  distortion `sigma^2 4^-b` it lowers most. This is the integer solution of
  the reverse water-filling problem that `analysis.reverse_waterfilling`
  solves in real-valued rates (every coefficient's bits are within one bit of
  its water-filling rate); it spends exactly B and never gives a
  coefficient of higher variance fewer bits. In `spatial` mode it therefore
  also moves bits between locations; at most `MAX_COEFFICIENT_BITS` per
  coefficient.

Empirical entropy
-----------------
`entropy_bits(histogram)` is the plug-in entropy (bits per symbol) of a
histogram; `SymbolCounts` accumulates histograms of symbol *streams* over
an eval split and reports bits per image after ideal entropy coding with one
static model per stream: `sum_streams (symbols of the stream per image) *
H(stream)`. Streams: a VQ/FSQ/LFQ latent is one stream (the codebook is
shared by every location); a quantized PCA coefficient belongs to the stream
of its component index and bit depth, pooled over locations (symbols are in
units of each coefficient's own sigma, so they share a shape). The estimate
is over the eval images themselves and excludes the cost of sending the
model: with few images per stream and many levels it is biased low (it
cannot exceed log2 of the number of samples per stream).

Entropy models for actual coding (`pcavae.codec`) are fixed in advance
instead: `gaussian_symbol_probabilities(b)` (a quantized coefficient under
N(0, sigma^2) at its running sigma) and `smoothed_code_probabilities(counts)`
(code frequencies counted on training images, add-1/2 smoothed).
"""

import functools
import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

FLOAT_BITS = 32
MAX_COEFFICIENT_BITS = 16
VQ_FAMILY = ('vq', 'ema_vq', 'simvq', 'vqgan_fc')

Array = jax.Array


# ---------------------------------------------------------------------------
# Bits per image of a config.
# ---------------------------------------------------------------------------


def _arg(config: ml_collections.ConfigDict, name: str) -> Any:
  """A bottleneck argument: the config's value, else the class default."""
  # Imported here: the bottlenecks import this module's quantizer.
  import dataclasses  # pylint: disable=g-import-not-at-top
  from pcavae.models import bottlenecks  # pylint: disable=g-import-not-at-top
  b = config.model.bottleneck
  if name in b:
    return b[name]
  for f in dataclasses.fields(bottlenecks.get(b.kind)):
    if f.name == name:
      return f.default
  raise KeyError(f'The {b.kind!r} bottleneck has no argument {name!r}.')


def num_tokens(config: ml_collections.ConfigDict) -> int:
  """Latent locations per image (1 for PCA `global`)."""
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  b = config.model.bottleneck
  if b.kind == 'pca' and b.get('mode', 'spatial') == 'global':
    return 1
  h, w, _ = configlib.latent_shape(config)
  return h * w


def num_codes(config: ml_collections.ConfigDict) -> Optional[int]:
  """K, the (implicit) codebook size of a discrete bottleneck, else None."""
  kind = config.model.bottleneck.kind
  if kind in VQ_FAMILY:
    return int(_arg(config, 'codebook_size'))
  if kind == 'fsq':
    return int(math.prod(int(l) for l in _arg(config, 'levels')))
  if kind == 'lfq':
    return 2 ** int(_arg(config, 'code_dim'))
  return None


def check_coefficient_quantization(num_bits: Any, budget: Any,
                                   num_coefficients: Optional[int] = None
                                   ) -> None:
  """Raises ValueError, naming the config key, for bad `coefficient_bits` /
  `coefficient_bit_budget` values of the PCA bottleneck. With
  `num_coefficients` (per image) the budget's upper bound is checked too."""
  key = 'config.model.bottleneck.'
  if (isinstance(num_bits, bool) or not isinstance(num_bits, int) or not (
      0 <= num_bits <= MAX_COEFFICIENT_BITS or num_bits == FLOAT_BITS)):
    raise ValueError(f'{key}coefficient_bits={num_bits!r} must be an integer '
                     f'in 0..{MAX_COEFFICIENT_BITS}, or 32 (unquantized).')
  if budget is None:
    return
  if num_bits != FLOAT_BITS:
    raise ValueError(f'{key}coefficient_bit_budget={budget!r} and '
                     f'{key}coefficient_bits={num_bits} are exclusive; leave '
                     'coefficient_bits at 32 when setting a budget.')
  most = (None if num_coefficients is None
          else num_coefficients * MAX_COEFFICIENT_BITS)
  if (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
      or (most is not None and budget > most)):
    raise ValueError(
        f'{key}coefficient_bit_budget={budget!r} (bits per image) must be a '
        'positive integer' + ('' if most is None else
                              f' in 1..{most} ({num_coefficients} coefficients'
                              f' per image, at most {MAX_COEFFICIENT_BITS} '
                              'bits each)') + '.')


def coefficient_quantization(config: ml_collections.ConfigDict
                             ) -> Optional[Tuple[str, int]]:
  """How a PCA config quantizes its coefficients at eval.

  Returns:
    None (not PCA, or unquantized 32-bit floats), `('fixed', b)` or
    `('budget', B)`.
  """
  if config.model.bottleneck.kind != 'pca':
    return None
  budget = _arg(config, 'coefficient_bit_budget')
  if budget is not None:
    return ('budget', int(budget))
  b = int(_arg(config, 'coefficient_bits'))
  return None if b == FLOAT_BITS else ('fixed', b)


def latent_bits(config: ml_collections.ConfigDict) -> int:
  """Bits per image of the latent as reconstructed (module docstring)."""
  b = config.model.bottleneck
  kind = b.kind
  tokens = num_tokens(config)
  if kind in VQ_FAMILY:
    per_token = math.log2(num_codes(config))
  elif kind == 'fsq':
    per_token = sum(math.log2(int(l)) for l in _arg(config, 'levels'))
  elif kind == 'lfq':
    per_token = int(_arg(config, 'code_dim'))
  elif kind == 'kl':
    channels = _arg(config, 'latent_channels') or config.model.latent_dim
    per_token = channels * FLOAT_BITS
  elif kind == 'identity':
    per_token = config.model.latent_dim * FLOAT_BITS
  elif kind == 'pca':
    quant = coefficient_quantization(config)
    if quant is not None and quant[0] == 'budget':
      return quant[1]  # allocate_bits spends exactly the budget
    per_token = b.num_components * (FLOAT_BITS if quant is None else quant[1])
  else:
    raise ValueError(f'latent_bits does not know the bottleneck {kind!r}.')
  # The epsilon keeps float noise (e.g. 64 * log2(1024)) from rounding up.
  return int(math.ceil(tokens * per_token - 1e-9))


# ---------------------------------------------------------------------------
# Uniform scalar quantization of coefficients.
# ---------------------------------------------------------------------------


def _gaussian_uniform_mse(step: float, levels: int) -> float:
  """MSE of a `levels`-level midrise uniform quantizer on N(0, 1)."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  k = np.arange(levels, dtype=np.float64)
  centres = (k - levels / 2 + 0.5) * step
  lo = (k - levels / 2) * step
  hi = lo + step
  lo[0], hi[-1] = -np.inf, np.inf
  pdf = lambda t: np.where(np.isfinite(t), np.exp(-0.5 * np.square(
      np.where(np.isfinite(t), t, 0.0))) / np.sqrt(2 * np.pi), 0.0)
  tpdf = lambda t: np.where(np.isfinite(t), np.where(np.isfinite(t), t, 0.0)
                            * pdf(t), 0.0)
  mass = special.ndtr(hi) - special.ndtr(lo)
  # int_lo^hi (x - c)^2 phi = (1 + c^2) P + (lo phi(lo) - hi phi(hi))
  #                           - 2 c (phi(lo) - phi(hi))
  per_cell = ((1 + np.square(centres)) * mass + tpdf(lo) - tpdf(hi)
              - 2 * centres * (pdf(lo) - pdf(hi)))
  return float(np.sum(per_cell))


@functools.lru_cache(maxsize=None)
def gaussian_uniform_step(num_bits: int) -> float:
  """Step of the MSE-optimal `2^b`-level uniform quantizer of N(0, 1).

  Golden-section search on log(step) (the MSE is unimodal in the step);
  b = 0 has no step (one level, at 0) and returns 1.
  """
  if num_bits == 0:
    return 1.0
  levels = 2 ** num_bits
  lo, hi = math.log(1e-6), math.log(4.0)
  g = (math.sqrt(5) - 1) / 2
  a, b = hi - g * (hi - lo), lo + g * (hi - lo)
  fa = _gaussian_uniform_mse(math.exp(a), levels)
  fb = _gaussian_uniform_mse(math.exp(b), levels)
  for _ in range(60):  # shrinks the bracket 1.6e-13-fold
    if fa < fb:
      hi, b, fb = b, a, fa
      a = hi - g * (hi - lo)
      fa = _gaussian_uniform_mse(math.exp(a), levels)
    else:
      lo, a, fa = a, b, fb
      b = lo + g * (hi - lo)
      fb = _gaussian_uniform_mse(math.exp(b), levels)
  return math.exp((lo + hi) / 2)


def step_table() -> np.ndarray:
  """`gaussian_uniform_step(b)` for b = 0..MAX_COEFFICIENT_BITS, float32."""
  return np.asarray([gaussian_uniform_step(b)
                     for b in range(MAX_COEFFICIENT_BITS + 1)], np.float32)


def quantizer_steps(sigma: Array, num_bits: Array) -> Array:
  """Quantizer step of each coefficient: `s_b * sigma` (floored above 0)."""
  steps = jnp.asarray(step_table())[jnp.asarray(num_bits, jnp.int32)]
  # A coefficient that never varied (sigma 0) still needs a finite step;
  # its symbols then sit on the outer levels, a tiny value either way.
  return jnp.maximum(steps * jnp.asarray(sigma, jnp.float32), 1e-12)


def quantize(y: Array, sigma: Array, num_bits: Array) -> Tuple[Array, Array]:
  """Uniform midrise quantization of coefficients (module docstring).

  Args:
    y: coefficients (any shape), centred (the PCA mean is subtracted).
    sigma: their standard deviations, broadcastable to `y`.
    num_bits: bits per coefficient (0..MAX_COEFFICIENT_BITS), int,
      broadcastable to `y`.

  Returns:
    `(symbols, y_hat)`: int32 symbols in `[0, 2^b)` and the dequantized
    float32 coefficients `(symbol - 2^b / 2 + 1/2) * step`.
  """
  y = jnp.asarray(y, jnp.float32)
  num_bits = jnp.broadcast_to(jnp.asarray(num_bits, jnp.int32), y.shape)
  step = quantizer_steps(sigma, num_bits)
  half = jnp.left_shift(1, num_bits).astype(jnp.float32) / 2
  # floor before adding the offset: at 16 bits, y / step + 2^15 in float32
  # would round away the position inside the cell.
  symbols = jnp.clip(jnp.floor(y / step) + half, 0, 2 * half - 1)
  return symbols.astype(jnp.int32), dequantize(symbols, sigma, num_bits)


def dequantize(symbols: Array, sigma: Array, num_bits: Array) -> Array:
  """Coefficients from symbols (inverse of `quantize` up to its error)."""
  num_bits = jnp.asarray(num_bits, jnp.int32)
  step = quantizer_steps(sigma, num_bits)
  half = jnp.left_shift(1, num_bits).astype(jnp.float32) / 2
  return (jnp.asarray(symbols, jnp.float32) - half + 0.5) * step


def allocate_bits(variances: Array, budget: int,
                  max_bits: int = MAX_COEFFICIENT_BITS) -> Array:
  """Integer bits per coefficient for a total budget (jittable).

  Greedy marginal-return allocation: under the high-rate model
  `D_i(b) = c sigma_i^2 4^-b` the k-th bit of coefficient i lowers the
  distortion in proportion to `sigma_i^2 4^-(k-1)`, so spending B bits
  optimally takes the B largest of those; since they decrease in k, each
  coefficient gets a prefix, i.e. a bit count. This is reverse water-filling
  (`analysis.reverse_waterfilling`) with integer rates.

  Args:
    variances: coefficient variances, any shape (>= 0).
    budget: B, total bits (static, `0 <= B <= size * max_bits`).
    max_bits: cap per coefficient.

  Returns:
    int32 bits per coefficient, the shape of `variances`, summing to B.
  """
  v = jnp.asarray(variances, jnp.float32)
  n = v.size
  budget = int(budget)
  if not 0 <= budget <= n * max_bits:
    raise ValueError(
        f'A budget of {budget} bits for {n} coefficients must lie in '
        f'[0, {n * max_bits}] ({max_bits} bits per coefficient at most).')
  if budget == 0:
    return jnp.zeros(v.shape, jnp.int32)
  # log2 domain: variances span many decades; zeros get a finite floor so
  # that they rank last rather than produce NaNs.
  logv = jnp.log2(jnp.maximum(v.reshape(-1), 1e-30))
  gains = logv[:, None] - 2.0 * jnp.arange(max_bits, dtype=jnp.float32)
  _, idx = jax.lax.top_k(gains.reshape(-1), budget)
  counts = jnp.zeros((n,), jnp.int32).at[idx // max_bits].add(1)
  return counts.reshape(v.shape)


def pca_symbol_streams(symbol_bits: np.ndarray) -> np.ndarray:
  """Entropy-model stream of each quantized PCA coefficient of an image.

  Args:
    symbol_bits: bits of each coefficient of one image, `(..., Q)`.

  Returns:
    int64 stream ids of the same shape: one per (component, bit depth).
  """
  symbol_bits = np.asarray(symbol_bits, np.int64)
  component = np.broadcast_to(np.arange(symbol_bits.shape[-1]),
                              symbol_bits.shape)
  return component * (MAX_COEFFICIENT_BITS + 1) + symbol_bits


# ---------------------------------------------------------------------------
# Empirical entropy.
# ---------------------------------------------------------------------------


def entropy_bits(histogram) -> float:
  """Plug-in entropy, in bits per symbol, of a histogram of counts."""
  h = np.asarray(histogram, np.float64).reshape(-1)
  total = h.sum()
  if total <= 0:
    return 0.0
  p = h[h > 0] / total
  return float(-np.sum(p * np.log2(p)))


class SymbolCounts:
  """Histograms of symbol streams accumulated over batches of images.

  `update(symbols, streams)` adds a batch: `symbols` `(n, S)` non-negative
  ints (n images, S symbols each), `streams` `(S,)` the stream of each slot.
  `bits_per_image()` is the ideal entropy-coded size (module docstring).
  """

  def __init__(self):
    self.num_images = 0
    self._keys = np.zeros((0,), np.int64)
    self._counts = np.zeros((0,), np.int64)

  def update(self, symbols, streams) -> None:
    symbols = np.asarray(symbols, np.int64)
    if symbols.ndim != 2:
      raise ValueError(f'symbols must be (images, slots), got {symbols.shape}.')
    streams = np.broadcast_to(np.asarray(streams, np.int64),
                              symbols.shape[1:])
    if symbols.size and (symbols.min() < 0 or symbols.max() >= 2 ** 32):
      raise ValueError('symbols must lie in [0, 2^32).')
    keys = (streams[None, :] << 32) | symbols
    keys, counts = np.unique(keys.reshape(-1), return_counts=True)
    merged = np.concatenate([self._keys, keys])
    self._keys, inverse = np.unique(merged, return_inverse=True)
    self._counts = np.bincount(
        inverse, weights=np.concatenate([self._counts, counts]),
        minlength=self._keys.size).astype(np.int64)
    self.num_images += symbols.shape[0]

  def stream_entropies(self) -> dict:
    """`{stream: (symbols per image, bits per symbol)}`."""
    out = {}
    streams = self._keys >> 32
    for s in np.unique(streams):
      counts = self._counts[streams == s]
      out[int(s)] = (counts.sum() / max(self.num_images, 1),
                     entropy_bits(counts))
    return out

  def bits_per_image(self) -> float:
    return float(sum(n * h for n, h in self.stream_entropies().values()))


# ---------------------------------------------------------------------------
# Entropy models of the symbols (fixed before coding; `pcavae.codec`).
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def gaussian_symbol_probabilities(num_bits: int) -> np.ndarray:
  """P(symbol) of `quantize`'s `2^b`-level quantizer on N(0, 1).

  Cell k (0-based) covers `[(k - 2^b/2) s_b, (k - 2^b/2 + 1) s_b)` in units
  of sigma, the outer cells reaching to infinity, with `s_b` the quantizer's
  float32 step (`step_table`). Since the step is `s_b sigma`, this is the
  quantized N(0, sigma^2) of every coefficient of b bits, whatever sigma.
  Float64, sums to 1.
  """
  from scipy import special  # pylint: disable=g-import-not-at-top
  if not 1 <= num_bits <= MAX_COEFFICIENT_BITS:
    raise ValueError(f'num_bits={num_bits} must lie in '
                     f'1..{MAX_COEFFICIENT_BITS}.')
  levels = 2 ** num_bits
  step = float(step_table()[num_bits])
  edges = (np.arange(levels + 1, dtype=np.float64) - levels / 2) * step
  edges[0], edges[-1] = -np.inf, np.inf
  return np.diff(special.ndtr(edges))


def smoothed_code_probabilities(counts) -> np.ndarray:
  """Add-1/2 (Krichevsky-Trofimov) estimate `(n_k + 1/2) / (N + K/2)` of a
  histogram of codes: no code has probability 0."""
  counts = np.asarray(counts, np.float64)
  return (counts + 0.5) / (counts.sum() + 0.5 * counts.size)
