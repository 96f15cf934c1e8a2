"""Codebook statistics from a histogram of code assignments.

The histogram is the count of each code index over some set of latent
locations (one training batch inside the jitted step, or the whole eval
split at eval). Every function works on numpy and on jax arrays (jit-safe).

- usage: the fraction of the K codes hit at least once;
- perplexity: `exp(H(p))` with `p` the mean assignment (the histogram
  normalised), between 1 (one code used) and K (uniform use);
- dead codes: the number of codes never hit.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def code_histogram(codes: Array, num_codes: int,
                   weights: Optional[Array] = None) -> Array:
  """Counts of each code in `codes` (any shape, int), length `num_codes`.

  Args:
    codes: integer code indices in `[0, num_codes)`.
    num_codes: K, the codebook size (static).
    weights: optional weights broadcastable to `codes` (e.g. a 0/1 mask of
      real, non-padding examples).

  Returns:
    `(num_codes,)` float32 counts.
  """
  codes = jnp.asarray(codes)
  w = (jnp.ones(codes.shape, jnp.float32) if weights is None else
       jnp.broadcast_to(jnp.asarray(weights, jnp.float32), codes.shape))
  return jnp.zeros((num_codes,), jnp.float32).at[codes.reshape(-1)].add(
      w.reshape(-1))


def usage(histogram: Array) -> Array:
  """Fraction of codes hit at least once."""
  h = jnp.asarray(histogram, jnp.float32)
  return jnp.mean((h > 0).astype(jnp.float32))


def perplexity(histogram: Array) -> Array:
  """`exp` of the entropy (nats) of the normalised histogram."""
  h = jnp.asarray(histogram, jnp.float32)
  p = h / jnp.maximum(jnp.sum(h), 1e-12)
  ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(ent)


def dead_codes(histogram: Array) -> Array:
  """Number of codes never hit."""
  h = jnp.asarray(histogram, jnp.float32)
  return jnp.sum((h <= 0).astype(jnp.int32))


def codebook_stats(histogram: Array, prefix: str = '') -> Dict[str, float]:
  """`{prefix}codebook_usage`, `...perplexity`, `...dead_codes` as floats."""
  return {
      f'{prefix}codebook_usage': float(usage(histogram)),
      f'{prefix}codebook_perplexity': float(perplexity(histogram)),
      f'{prefix}dead_codes': float(dead_codes(histogram)),
  }
