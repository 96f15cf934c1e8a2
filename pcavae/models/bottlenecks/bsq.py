"""Binary spherical quantization (BSQ; Zhao et al. 2024, "Image and Video
Tokenization with Binary Spherical Quantization").

Each location is projected to d dimensions, normalised onto the unit sphere
and quantized to the nearest of the `2^d` corners `sign(v) / sqrt(d)` of the
cube inscribed in it, with a straight-through gradient. The code of a
location is its d bits, never one index: d = 36 gives 2^36 codes, which no
histogram or categorical model could hold, so its statistics (the `codes`
eval unit), entropy loss and coding model (`pcavae.codec`) are all
factorised per bit.
"""

import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae import checks
from pcavae import losses
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import bit_coding
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import check_bit_code_dim
from pcavae.models.bottlenecks.base import Coding
from pcavae.models.bottlenecks.base import flatten
from pcavae.models.bottlenecks.base import KEY
from pcavae.models.bottlenecks.base import l2_normalize
from pcavae.models.bottlenecks.base import LatentShape
from pcavae.models.bottlenecks.base import project_out
from pcavae.models.bottlenecks.base import register
from pcavae.models.bottlenecks.base import straight_through


def bsq_quantize(v: Array) -> Array:
  """`sign(v) / sqrt(d)` (0 counts as positive): the corner of the cube
  inscribed in the unit sphere nearest to `v`, `(..., d)`."""
  d = v.shape[-1]
  return jnp.where(v >= 0, 1.0, -1.0) / math.sqrt(d)


def bsq_bit_logits(v: Array, inv_temperature: float) -> Array:
  """Logits of each bit being 1 under BSQ's soft assignment
  `softmax_c(-tau ||v - c||^2)` over the corners c: `4 tau v / sqrt(d)`
  (`losses.bit_entropy_terms`)."""
  return 4.0 * inv_temperature * v / math.sqrt(v.shape[-1])


def bsq_codes_from_bits(bits: Array) -> Array:
  """0/1 bits `(..., d)` -> the quantized latent `(2 bits - 1) / sqrt(d)`."""
  return (2.0 * bits.astype(jnp.float32) - 1.0) / math.sqrt(bits.shape[-1])


@register('bsq')
class BSQBottleneck(Bottleneck):
  """Binary spherical quantization (module docstring).

  `h -> u = proj_in(h)` (d outputs; skipped when D equals d), `v = u / |u|`,
  `q = sign(v) / sqrt(d)` (straight-through), `proj_out(q)` back to D. The
  symbols (`aux['bits']`) are the d bits, 1 where `v >= 0`.

  Loss: `entropy_weight * (per-sample entropy - batch_entropy_weight *
  batch entropy)` of the soft assignment, both factorised per bit
  (`losses.bit_entropy_terms`), plus `commitment_weight * ||v - sg(q)||^2`
  (summed over the d dimensions, averaged over locations).

  Attributes:
    code_dim: d, bits per location (1..64).
    entropy_weight: 0.1.
    batch_entropy_weight: gamma on the batch entropy (1).
    commitment_weight: 0.25.
    inv_temperature: tau of the soft assignment (10).
  """
  code_dim: int = 18
  entropy_weight: float = 0.1
  batch_entropy_weight: float = 1.0
  commitment_weight: float = 0.25
  inv_temperature: float = 10.0

  symbol_key = 'bits'

  @property
  def num_codes(self) -> int:
    return 2 ** int(self.code_dim)

  def bits_per_token(self, latent_dim: int) -> float:
    del latent_dim
    return int(self.code_dim)

  def validate(self, latent_shape: LatentShape) -> None:
    del latent_shape
    check_bit_code_dim(self.code_dim)
    checks.non_negative(self.entropy_weight, KEY + 'entropy_weight')
    checks.non_negative(self.batch_entropy_weight,
                        KEY + 'batch_entropy_weight')
    checks.non_negative(self.commitment_weight, KEY + 'commitment_weight')
    checks.positive(self.inv_temperature, KEY + 'inv_temperature', float)

  def coding(self, aux: Dict[str, Any]) -> Coding:
    """One stream of every bit, factorised: a fitted Bernoulli per bit
    position."""
    return bit_coding(aux[self.symbol_key])

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    del side
    return project_out(self, bsq_codes_from_bits(symbols))

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    in_dtype = h.dtype
    d = h.shape[-1]
    z = h.astype(jnp.float32)
    project = d != self.code_dim
    if project:
      z = nn.Dense(self.code_dim, name='proj_in', dtype=jnp.float32)(z)
    v = l2_normalize(z)
    q = bsq_quantize(v)
    flat, _ = flatten(v)
    per_sample, batch = losses.bit_entropy_terms(
        bsq_bit_logits(flat, self.inv_temperature))
    ent = per_sample - self.batch_entropy_weight * batch
    commit = jnp.mean(jnp.sum(jnp.square(v - jax.lax.stop_gradient(q)), -1))
    v_q = straight_through(v, q)
    out = nn.Dense(d, name='proj_out', dtype=jnp.float32)(v_q) if project \
        else v_q
    bits = (v >= 0).astype(jnp.int32)
    aux = {'loss': self.entropy_weight * ent + self.commitment_weight * commit,
           'entropy_loss': ent, 'per_sample_entropy': per_sample,
           'batch_entropy': batch, 'commitment_loss': commit, 'bits': bits,
           'bit_balance': jnp.mean(bits.astype(jnp.float32))}
    return out.astype(in_dtype), aux
