"""The plain autoencoder's bottleneck."""

from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from pcavae.models import coding
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import register


@register('identity')
class IdentityBottleneck(Bottleneck):
  """The plain autoencoder: `h_hat = h`."""

  warmup_applies = False

  def bits_per_token(self, latent_dim: int) -> float:
    # A continuous latent, counted at 32 bits per float.
    return latent_dim * coding.FLOAT_BITS

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    del train
    return h, {'loss': jnp.zeros((), jnp.float32)}
