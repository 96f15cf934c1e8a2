"""Uniform scalar quantization of PCA coefficients (pure array math).

No Flax, no config: the PCA bottleneck quantizes with it at eval, the codec
codes its symbols, `pcavae.bits` counts them.

Coefficient quantization (PCA, eval only)
-----------------------------------------
With `config.model.bottleneck.coefficient_bits = b` (0..16; 32, the default,
turns quantization off) or `coefficient_bit_budget = B` the PCA bottleneck,
at `train=False`, replaces each coefficient y by a uniform scalar quantizer's
output before reconstructing `y C^T + mu`, so every eval metric, grid and
`pcavae.reconstruct` output is made from the quantized latent whose size
`pcavae.bits.latent_bits` reports. Training never quantizes (the paper's model).

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

Entropy model of the symbols (`pcavae.codec`): `gaussian_symbol_probabilities(b)`
is a quantized coefficient under N(0, sigma^2) at its running sigma.
"""

import functools
import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

FLOAT_BITS = 32
MAX_COEFFICIENT_BITS = 16

Array = jax.Array


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


def _gaussian_uniform_mse(step: float, levels: int) -> float:
  """MSE of a `levels`-level midrise uniform quantizer on N(0, 1)."""
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



@functools.lru_cache(maxsize=None)
def gaussian_symbol_probabilities(num_bits: int) -> np.ndarray:
  """P(symbol) of `quantize`'s `2^b`-level quantizer on N(0, 1).

  Cell k (0-based) covers `[(k - 2^b/2) s_b, (k - 2^b/2 + 1) s_b)` in units
  of sigma, the outer cells reaching to infinity, with `s_b` the quantizer's
  float32 step (`step_table`). Since the step is `s_b sigma`, this is the
  quantized N(0, sigma^2) of every coefficient of b bits, whatever sigma.
  Float64, sums to 1.
  """
  if not 1 <= num_bits <= MAX_COEFFICIENT_BITS:
    raise ValueError(f'num_bits={num_bits} must lie in '
                     f'1..{MAX_COEFFICIENT_BITS}.')
  levels = 2 ** num_bits
  step = float(step_table()[num_bits])
  edges = (np.arange(levels + 1, dtype=np.float64) - levels / 2) * step
  edges[0], edges[-1] = -np.inf, np.inf
  return np.diff(special.ndtr(edges))
