"""The diagonal-Gaussian KL bottleneck (AutoencoderKL)."""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae import checks
from pcavae import losses
from pcavae.models.bottlenecks.base import Array
from pcavae.models.bottlenecks.base import Aux
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import check_optional
from pcavae.models.bottlenecks.base import KEY
from pcavae.models.bottlenecks.base import LatentShape
from pcavae.models.bottlenecks.base import register
from pcavae.models import coding


@register('kl')
class KLBottleneck(Bottleneck):
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

  warmup_applies = False
  per_image_loss = True

  def validate(self, latent_shape: LatentShape) -> None:
    del latent_shape
    check_optional(checks.positive, self.latent_channels, 'latent_channels')
    checks.non_negative(self.kl_weight, KEY + 'kl_weight')

  def bits_per_token(self, latent_dim: int) -> float:
    # A continuous latent, counted at 32 bits per float.
    return (self.latent_channels or latent_dim) * coding.FLOAT_BITS

  @nn.compact
  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
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

  def latent_from_coefficients(self, coefficients: Array) -> Array:
    """The eval output from posterior means: the `post` 1x1 conv, in full
    float32 as `forward` computes it."""
    post = self.get_variable('params', 'post')
    kernel = post['kernel'].reshape(post['kernel'].shape[-2:])
    y = jnp.asarray(coefficients, jnp.float32)
    return jnp.einsum('...c,cd->...d', y, kernel,
                      precision=jax.lax.Precision.HIGHEST) + post['bias']
