"""The scalar quantizers: FSQ and LFQ (implicit, fixed codebooks).

Their grids are fixed, so the AE warm-up switch (`pcavae.warmup`) only turns
the rounding on (the base `warmup_init`: nothing to initialise; their
projections start untrained).
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae import checks
from pcavae import losses
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import batch_code_stats
from pcavae.models.bottlenecks.base import bit_coding
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import check_bit_code_dim
from pcavae.models.bottlenecks.base import Coding
from pcavae.models.bottlenecks.base import flatten
from pcavae.models.bottlenecks.base import KEY
from pcavae.models.bottlenecks.base import LatentShape
from pcavae.models.bottlenecks.base import project_out
from pcavae.models.bottlenecks.base import register
from pcavae.models.bottlenecks.base import straight_through



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
  return straight_through(bounded, jnp.round(bounded)) / _fsq_half_width(
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
class FSQBottleneck(Bottleneck):
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

  symbol_key = 'codes'

  @property
  def num_codes(self) -> int:
    return int(math.prod(int(l) for l in self.levels))

  def bits_per_token(self, latent_dim: int) -> float:
    del latent_dim
    return sum(math.log2(int(l)) for l in self.levels)

  def validate(self, latent_shape: LatentShape) -> None:
    del latent_shape
    levels = self.levels
    if (not isinstance(levels, (list, tuple)) or not levels
        or any(isinstance(l, bool) or not isinstance(l, int) or l < 2
               for l in levels)):
      raise ValueError(f'{KEY}levels={levels!r} must be a non-empty list of '
                       'integers >= 2 (e.g. (8, 5, 5, 5)).')

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    q = fsq_indices_to_codes(symbols, tuple(int(l) for l in self.levels))
    return project_out(self, q)

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
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
           **batch_code_stats(indices, self.num_codes)}
    return out.astype(in_dtype), aux


# LFQ: up to this many bits the entropy loss materialises all 2^d codes and
# the code is an index; above, both are per bit, up to `MAX_BIT_CODE_DIM`.
EXACT_MAX_CODE_DIM = 16


def lfq_codebook(code_dim: int) -> Array:
  """All `2^d` LFQ codes as `(2^d, d)` float32 sign vectors; bit i of the
  index is channel i being positive."""
  idx = jnp.arange(2 ** code_dim, dtype=jnp.int32)
  bits = (idx[:, None] >> jnp.arange(code_dim, dtype=jnp.int32)) & 1
  return bits.astype(jnp.float32) * 2.0 - 1.0


@register('lfq')
class LFQBottleneck(Bottleneck):
  """Lookup-free quantization (MAGVIT-v2, Yu et al. 2023).

  Each location is mapped to `code_dim` channels (a linear layer, skipped
  when D equals it) and each channel quantized to its sign, +-1, with a
  straight-through gradient; the index is the binary number of the signs.
  Loss: `entropy_weight * (per-sample entropy - batch entropy)` of the soft
  assignment to all `2^d` codes plus `commitment_weight * ||z - sg(q)||^2`.
  Up to `EXACT_MAX_CODE_DIM` bits the assignment is materialised
  (`losses.lfq_entropy_terms`) and the symbols are the code indices
  (`codes`, one categorical); above it (up to 64 bits) the entropies are
  factorised per bit (`losses.bit_entropy_terms`: the per-sample entropy
  exactly, the batch entropy as the sum of the bits') and the symbols are
  the bits (`bits`, one Bernoulli per bit).

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
  def symbol_key(self) -> str:
    return 'codes' if self._indexed else 'bits'

  @property
  def _indexed(self) -> bool:
    """Whether the code is small enough for indices and exact entropies."""
    return int(self.code_dim) <= EXACT_MAX_CODE_DIM

  @property
  def num_codes(self) -> int:
    return 2 ** int(self.code_dim)

  def coding(self, aux: Dict[str, Any]) -> Coding:
    if self._indexed:
      return super().coding(aux)
    return bit_coding(aux['bits'])

  def bits_per_token(self, latent_dim: int) -> float:
    del latent_dim
    return int(self.code_dim)

  def validate(self, latent_shape: LatentShape) -> None:
    del latent_shape
    check_bit_code_dim(self.code_dim)
    checks.non_negative(self.entropy_weight, KEY + 'entropy_weight')
    checks.non_negative(self.commitment_weight, KEY + 'commitment_weight')

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    if self._indexed:
      q = jnp.take(lfq_codebook(int(self.code_dim)), symbols, axis=0)
    else:
      q = 2.0 * symbols.astype(jnp.float32) - 1.0
    return project_out(self, q)

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    in_dtype = h.dtype
    d = h.shape[-1]
    z = h.astype(jnp.float32)
    project = d != self.code_dim
    if project:
      z = nn.Dense(self.code_dim, name='proj_in', dtype=jnp.float32)(z)
    q = jnp.where(z > 0, 1.0, -1.0)
    bits = (z > 0).astype(jnp.int32)
    flat, _ = flatten(z)
    if self._indexed:
      per_sample, batch = losses.lfq_entropy_terms(
          flat, lfq_codebook(self.code_dim), self.inv_temperature)
    else:
      per_sample, batch = losses.bit_entropy_terms(
          4.0 * self.inv_temperature * flat)
    ent = per_sample - batch
    commit = jnp.mean(jnp.square(z - jax.lax.stop_gradient(q)))
    z_q = straight_through(z, q)
    out = nn.Dense(d, name='proj_out', dtype=jnp.float32)(z_q) if project \
        else z_q
    aux = {'loss': self.entropy_weight * ent + self.commitment_weight * commit,
           'entropy_loss': ent, 'per_sample_entropy': per_sample,
           'batch_entropy': batch, 'commitment_loss': commit}
    if self._indexed:
      indices = jnp.sum(bits << jnp.arange(self.code_dim, dtype=jnp.int32),
                        axis=-1).astype(jnp.int32)
      aux.update(codes=indices, **batch_code_stats(indices, self.num_codes))
    else:
      aux['bits'] = bits
    return out.astype(in_dtype), aux
