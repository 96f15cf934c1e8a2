"""Latent bit accounting (DESIGN.md §6).

`latent_bits(config)` is the size of one image's latent as the bottleneck
defines it, with `tokens` the number of latent locations (`h * w`; 1 for the
PCA `global` mode, whose latent is one vector):

  vq, ema_vq, simvq, vqgan_fc   tokens * log2(K)
  fsq                           tokens * sum_i log2(L_i)
  lfq                           tokens * d
  kl                            tokens * latent_channels * 32
  identity                      tokens * D * 32
  pca                           tokens * Q * b,  b = coefficient_bits (32)

Non-integer totals (K or L_i not powers of two) are rounded up to whole bits.
Continuous latents are counted at 32 bits per float, as the PCA-VAE paper
counts its coefficients: an upper bound, not a coded size.
"""

import dataclasses
import math
from typing import Any, Optional

import ml_collections

from pcavae import configlib
from pcavae.models import bottlenecks

FLOAT_BITS = 32
VQ_FAMILY = ('vq', 'ema_vq', 'simvq', 'vqgan_fc')


def _arg(config: ml_collections.ConfigDict, name: str) -> Any:
  """A bottleneck argument: the config's value, else the class default."""
  b = config.model.bottleneck
  if name in b:
    return b[name]
  for f in dataclasses.fields(bottlenecks.get(b.kind)):
    if f.name == name:
      return f.default
  raise KeyError(f'The {b.kind!r} bottleneck has no argument {name!r}.')


def num_tokens(config: ml_collections.ConfigDict) -> int:
  """Latent locations per image (1 for PCA `global`)."""
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


def latent_bits(config: ml_collections.ConfigDict) -> int:
  """Bits per image of the latent as configured (see the module docstring)."""
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
    per_token = b.num_components * b.get('coefficient_bits', FLOAT_BITS)
  else:
    raise ValueError(f'latent_bits does not know the bottleneck {kind!r}.')
  # The epsilon keeps float noise (e.g. 64 * log2(1024)) from rounding up.
  return int(math.ceil(tokens * per_token - 1e-9))
