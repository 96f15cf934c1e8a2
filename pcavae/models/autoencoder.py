"""Encoder, decoder and the autoencoder around an interchangeable bottleneck.

The architecture is the PCA-VAE reference's (DESIGN.md §3): per stage a 4x4
stride-2 conv + LeakyReLU; a 3x3 conv + LeakyReLU; residual layers
`x + conv1x1(relu(conv3x3(x)))` without bias; LeakyReLU; a 1x1 conv to D +
LeakyReLU. The decoder mirrors it with 4x4 stride-2 transposed convs and ends
in tanh. Images are NHWC in [-1, 1] inside the model. PyTorch's
`Conv2d(k=4, s=2, p=1)` is `nn.Conv(k=4, s=2, padding=1)` here and its
`ConvTranspose2d(k=4, s=2, p=1)` is `nn.ConvTranspose(k=4, s=2, padding=2)`
(padding of the dilated input, `k - 1 - p`): both halve/double H exactly.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae.models import bottlenecks

Array = jax.Array


def warmup_gate(active: Array, z: Array, z_hat: Array, aux: Dict[str, Array]
                ) -> Tuple[Array, Dict[str, Array]]:
  """The AE warm-up switch: the bottleneck's output and loss if `active`,
  else its input and 0 (see `Autoencoder`).

  A select, not a cond: the bottleneck is cheap next to the convs, and the
  gradient of the unselected branch is exactly zero.

  Args:
    active: int/bool scalar flag (may be traced).
    z: the bottleneck's input.
    z_hat: its output.
    aux: its aux dict; `loss` is gated, `quantizer_active` added.

  Returns:
    `(z_hat or z, aux)`.
  """
  on = active > 0
  z_hat = jnp.where(on, z_hat, z.astype(z_hat.dtype))
  aux = dict(aux, loss=jnp.where(on, aux['loss'], jnp.zeros_like(aux['loss'])),
             quantizer_active=on.astype(jnp.float32))
  return z_hat, aux


class ResidualLayer(nn.Module):
  """`x + conv1x1(relu(conv3x3(x)))`, no biases (the reference's)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = nn.Conv(c, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
    y = nn.Conv(c, (1, 1), use_bias=False, dtype=self.dtype)(nn.relu(y))
    return x + y


class Encoder(nn.Module):
  """Image `(B, R, R, 3)` -> latent `(B, R / 2^S, R / 2^S, D)`."""
  channels: Sequence[int] = (128, 256)
  latent_dim: int = 256
  num_res_layers: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    for c in self.channels:
      x = nn.leaky_relu(nn.Conv(c, (4, 4), strides=2, padding=1,
                                dtype=self.dtype)(x))
    c = self.channels[-1]
    x = nn.leaky_relu(nn.Conv(c, (3, 3), padding=1, dtype=self.dtype)(x))
    for _ in range(self.num_res_layers):
      x = ResidualLayer(dtype=self.dtype)(x)
    x = nn.leaky_relu(x)
    return nn.leaky_relu(nn.Conv(self.latent_dim, (1, 1), dtype=self.dtype)(x))


class Decoder(nn.Module):
  """Latent `(B, r, r, D)` -> image `(B, r 2^S, r 2^S, 3)` in [-1, 1]."""
  channels: Sequence[int] = (128, 256)
  num_res_layers: int = 6
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    z = z.astype(self.dtype)
    chans = list(self.channels)[::-1]
    x = nn.leaky_relu(nn.Conv(chans[0], (3, 3), padding=1, dtype=self.dtype)(z))
    for _ in range(self.num_res_layers):
      x = ResidualLayer(dtype=self.dtype)(x)
    x = nn.leaky_relu(x)
    for c in chans[1:]:
      x = nn.leaky_relu(nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding=2,
                                         dtype=self.dtype)(x))
    x = nn.ConvTranspose(self.out_channels, (4, 4), strides=(2, 2), padding=2,
                         dtype=self.dtype, name='conv_out')(x)
    return jnp.tanh(x.astype(jnp.float32))


class Autoencoder(nn.Module):
  """Encoder -> bottleneck -> decoder.

  AE warm-up (arXiv 2605.06870, "continuous first, discrete later"): with
  `warmup=True` the model holds a flag in the `warmup` collection
  (`active`, int32, 0 at init). While it is 0 the bottleneck's output is
  replaced by its input and its loss by 0 (the bottleneck still runs, so
  its statistics stay visible, but nothing reaches the decoder or the
  gradient through it); the trainer sets it to 1 at step
  `config.model.bottleneck.warmup_steps` (`pcavae.warmup`). The flag is
  model state, not a step comparison, so eval, checkpoints and
  `reconstruct` follow it, and flipping it recompiles nothing.

  Attributes:
    bottleneck_kind: a name from `bottlenecks.names()`.
    bottleneck_kwargs: constructor arguments of that bottleneck.
    warmup: whether the model has the AE warm-up flag (see above).
  """
  channels: Sequence[int] = (128, 256)
  latent_dim: int = 256
  num_res_layers: int = 6
  bottleneck_kind: str = 'pca'
  bottleneck_kwargs: Optional[Dict[str, Any]] = None
  dtype: Any = jnp.float32
  warmup: bool = False

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent_dim, self.num_res_layers,
                           dtype=self.dtype)
    self.bottleneck = bottlenecks.get(self.bottleneck_kind)(
        **(self.bottleneck_kwargs or {}))
    self.decoder = Decoder(self.channels, self.num_res_layers, dtype=self.dtype)
    if self.warmup:
      self.quantizer_active = self.variable(
          'warmup', 'active', lambda: jnp.zeros((), jnp.int32))

  def encode(self, x: Array) -> Array:
    return self.encoder(x)

  def quantize(self, z: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Dict[str, Array]]:
    z_hat, aux = self.bottleneck(z, train, lr=lr)
    if self.warmup:
      z_hat, aux = warmup_gate(self.quantizer_active.value, z, z_hat, aux)
    return z_hat, aux

  def decode(self, z: Array) -> Array:
    return self.decoder(z)

  def __call__(self, x: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Dict[str, Array]]:
    """Returns `(reconstruction in [-1, 1], aux)`; aux also holds `z_e`."""
    z = self.encode(x)
    z_hat, aux = self.quantize(z.astype(jnp.float32), train, lr)
    aux = dict(aux, z_e=z, z_q=z_hat)
    return self.decode(z_hat), aux
