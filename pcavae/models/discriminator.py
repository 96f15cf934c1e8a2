"""PatchGAN discriminator of the VQGAN objective.

taming-transformers' `NLayerDiscriminator` (after pix2pix): a 4x4 stride-2
conv with 64 filters + LeakyReLU(0.2); `num_layers - 1` further 4x4 stride-2
convs (filters doubling, capped at 8x) + norm + LeakyReLU; a 4x4 stride-1
conv + norm + LeakyReLU; a 4x4 stride-1 conv to one logit per patch. Weights
N(0, 0.02), norm scales N(1, 0.02), as taming's `weights_init`.

The norm is batch normalisation over the current batch without running
statistics: the discriminator only ever runs in training mode (taming's
`BatchNorm2d` in `train()`), so running averages would be state no one reads.
`norm='none'` drops it.

Each stride-2 conv halves the side and each stride-1 4x4 conv (padding 1)
shrinks it by one, so the input side must be at least `3 * 2^num_layers`
(24 px for the default 3 layers).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

NORMS = ('batch', 'none')


def min_resolution(num_layers: int) -> int:
  """Smallest image side for which the last conv still has an output."""
  return 3 * 2 ** num_layers


class _BatchStatNorm(nn.Module):
  """Batch normalisation with the current batch's statistics only."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', lambda k, s: 1.0 + 0.02 * jax.random.normal(
        k, s, jnp.float32), (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class PatchDiscriminator(nn.Module):
  """`(B, R, R, C)` images in [-1, 1] -> `(B, r, r, 1)` patch logits.

  Attributes:
    num_layers: stride-2 stages (3).
    filters: filters of the first conv (64).
    norm: 'batch' (taming's) or 'none'.
  """
  num_layers: int = 3
  filters: int = 64
  norm: str = 'batch'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.norm not in NORMS:
      raise ValueError(f'config.loss.disc_norm={self.norm!r}; choose one of '
                       f'{NORMS}.')
    side = min(x.shape[1:3])
    if side < min_resolution(self.num_layers):
      raise ValueError(
          f'A {self.num_layers}-layer PatchGAN needs images of at least '
          f'{min_resolution(self.num_layers)} px, got {side}; lower '
          'config.loss.disc_layers.')
    init = nn.initializers.normal(0.02)

    def conv(features, stride, use_bias, name):
      return nn.Conv(features, (4, 4), strides=stride, padding=1,
                     use_bias=use_bias, kernel_init=init, dtype=self.dtype,
                     name=name)

    def norm(y, name):
      if self.norm == 'none':
        return y
      return _BatchStatNorm(name=name)(y.astype(jnp.float32)).astype(y.dtype)

    has_bias = self.norm == 'none'
    x = x.astype(self.dtype)
    x = nn.leaky_relu(conv(self.filters, 2, True, 'conv_0')(x), 0.2)
    mult = 1
    for n in range(1, self.num_layers):
      mult = min(2 ** n, 8)
      x = conv(self.filters * mult, 2, has_bias, f'conv_{n}')(x)
      x = nn.leaky_relu(norm(x, f'norm_{n}'), 0.2)
    mult = min(2 ** self.num_layers, 8)
    x = conv(self.filters * mult, 1, has_bias, f'conv_{self.num_layers}')(x)
    x = nn.leaky_relu(norm(x, f'norm_{self.num_layers}'), 0.2)
    x = conv(1, 1, True, 'conv_logits')(x)
    return x.astype(jnp.float32)
