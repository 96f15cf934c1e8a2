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

import functools
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


def _space_to_depth(x: Array) -> Array:
  """`(B, 2h, 2w, C)` -> `(B, h, w, 4C)`, channels ordered `(dy, dx, c)`."""
  b, hh, ww, c = x.shape
  x = x.reshape(b, hh // 2, 2, ww // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hh // 2, ww // 2, 4 * c)


def _depth_to_space(x: Array) -> Array:
  """`(B, h, w, 4C)` with channels `(dy, dx, c)` -> `(B, 2h, 2w, C)`."""
  b, hh, ww, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, hh, ww, 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * hh, 2 * ww, c)


_DN = ('NHWC', 'HWIO', 'NHWC')


def _conv_s2_s2d(x: Array, kernel: Array, *, precision=None) -> Array:
  """4x4 stride-2 conv with padding 1 as a 2x2 stride-1 conv after a
  space-to-depth: `pad(x, 1)` of `(2h + 2)` rows becomes `h + 1` rows of 2x2
  pixel blocks, and tap `(2a + dy, 2b + dx)` of the 4x4 kernel is tap `(a, b)`
  of the 2x2 kernel on block channel `(dy, dx)`. The same sums, no strides,
  so the backward pass needs no dilated (mostly zero) convolutions."""
  kh, kw, cin, cout = kernel.shape
  assert (kh, kw) == (4, 4), kernel.shape
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  k2 = k2.reshape(2, 2, 4 * cin, cout)
  return jax.lax.conv_general_dilated(
      _space_to_depth(x), k2, (1, 1), 'VALID', dimension_numbers=_DN,
      precision=precision)


def _winograd_bt(d):
  """`B^T d` of Winograd F(2, 3) along a list of 4 input taps."""
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _winograd_g(g):
  """`G g` of F(2, 3): 3 kernel taps -> 4."""
  return [g[0], 0.5 * (g[0] + g[1] + g[2]), 0.5 * (g[0] - g[1] + g[2]), g[2]]


def _winograd_at(m):
  """`A^T m` of F(2, 3): 4 products -> 2 outputs."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _conv3x3_winograd(x: Array, kernel: Array, *, precision=None) -> Array:
  """3x3 stride-1 padding-1 NHWC conv by Winograd's minimal filtering
  F(2x2, 3x3) (Lavin & Gray, 2016), for even H and W.

  Every 2x2 output tile is `A^T [(G g G^T) . (B^T d B)] A` of its 4x4 input
  tile `d`: 16 products per tile and channel pair instead of 36, as 16
  batched matrix products `(tiles, C_in) @ (C_in, C_out)`. In exact
  arithmetic the same function as the direct conv; in float32 it differs
  by rounding (relative ~1e-6, tests/test_perf_equivalence.py). Written in
  plain array ops, so its gradients are Winograd convolutions too (the
  transposed transforms around two batched products).
  """
  b, h, w, c = x.shape
  th, tw = h // 2, w // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  v = []
  for r in _winograd_bt([xp[:, u:u + h:2] for u in range(4)]):
    v.extend(_winograd_bt([r[:, :, u:u + w:2] for u in range(4)]))
  v = jnp.stack(v).reshape(16, b * th * tw, c)              # (16, tiles, C)
  u = []
  for gi in _winograd_g([kernel[i] for i in range(3)]):
    u.extend(_winograd_g([gi[j] for j in range(3)]))
  m = jnp.matmul(v, jnp.stack(u), precision=precision)      # (16, tiles, O)
  m = m.reshape(4, 4, b, th, tw, m.shape[-1])
  y = [jnp.stack(_winograd_at([mi[j] for j in range(4)]), axis=3)
       for mi in _winograd_at([m[i] for i in range(4)])]    # (b, th, tw, 2, O)
  return jnp.stack(y, axis=2).reshape(b, h, w, -1)          # rows (th, 2)


def conv_general(lhs: Array, rhs: Array, window_strides, padding,
                 lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count: int = 1,
                 precision=None, *, winograd: bool = False,
                 **kwargs) -> Array:
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`.

  Same parameters and the same function; two NHWC configurations take a
  faster route (tests/test_perf_equivalence.py):
  - the 4x4 stride-2 padding-1 conv runs as `_conv_s2_s2d` (same sums; its
    backward pass has no dilated convolutions);
  - with `winograd=True`, the 3x3 stride-1 padding-1 conv on even H, W runs
    as `_conv3x3_winograd` (2.25x fewer multiplies, float32 rounding
    differences; `config.model.conv_algorithm`).
  Every other configuration goes to `lax.conv_general_dilated`.
  """
  pads = (None if isinstance(padding, str)
          else tuple(tuple(p) for p in padding))
  simple = (pads == ((1, 1), (1, 1))
            and not any(d != 1 for d in (lhs_dilation or ()))
            and not any(d != 1 for d in (rhs_dilation or ()))
            and feature_group_count == 1 and not kwargs
            and _is_nhwc(dimension_numbers, lhs.ndim)
            and lhs.shape[1] % 2 == 0 and lhs.shape[2] % 2 == 0)
  if simple and tuple(window_strides) == (2, 2) and rhs.shape[:2] == (4, 4):
    return _conv_s2_s2d(lhs, rhs, precision=precision)
  if (simple and winograd and tuple(window_strides) == (1, 1)
      and rhs.shape[:2] == (3, 3)):
    return _conv3x3_winograd(lhs, rhs, precision=precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  dn = jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
  return dn == jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _DN)


def _conv_t_subpixel(x: Array, kernel: Array, *, precision=None) -> Array:
  """`lax.conv_transpose(x, kernel, (2, 2), padding 2)` for a 4x4 kernel (the
  PyTorch `ConvTranspose2d(k=4, s=2, p=1)`), as one 2x2 stride-1 conv with 4x
  the output channels followed by a depth-to-space ("sub-pixel" form).

  Output row `o` of the transposed conv only sees input rows `i` with
  `o + k - 2 = 2 i`, so on `xp = pad(x, 1)`: with `o + 1 = 2 n + p`,
  `y[o] = xp[n] w[1 - p] + xp[n + 1] w[3 - p]`, a 2x2 window at `n` whose
  taps depend on the phase `p`. The dilated formulation multiplies 3 zeros
  for every input value and its weight gradient is very slow on XLA:CPU.
  """
  kh, kw, cin, cout = kernel.shape
  assert (kh, kw) == (4, 4), kernel.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # kernel[2a + q] with q = 1 - p: (a, q, b, r, i, o) -> (a, b, i, p, p', o).
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout)[:, ::-1, :, ::-1]
  k2 = k2.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
  z = jax.lax.conv_general_dilated(xp, k2, (1, 1), 'VALID',
                                   dimension_numbers=_DN, precision=precision)
  return _depth_to_space(z)[:, 1:-1, 1:-1, :]


class SubpixelConvTranspose(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=2)` (PyTorch
  `ConvTranspose2d(k=4, s=2, p=1)`) with the same parameters (`kernel`
  `(4, 4, in, features)`, `bias`), initialisers and outputs, computed by
  `_conv_t_subpixel`: one stride-1 conv and a depth-to-space instead of a
  conv over a zero-dilated input (tests/test_perf_equivalence.py)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (4, 4, x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,),
                      self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    return _conv_t_subpixel(x, kernel) + bias


def _conv_fn(winograd: bool):
  """The `conv_general_dilated` that pcavae's `nn.Conv`s use."""
  return functools.partial(conv_general, winograd=winograd)


class ResidualLayer(nn.Module):
  """`x + conv1x1(relu(conv3x3(x)))`, no biases (the reference's)."""
  dtype: Any = jnp.float32
  winograd: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = nn.Conv(c, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                conv_general_dilated=_conv_fn(self.winograd))(x)
    y = nn.Conv(c, (1, 1), use_bias=False, dtype=self.dtype)(nn.relu(y))
    return x + y


class Encoder(nn.Module):
  """Image `(B, R, R, 3)` -> latent `(B, R / 2^S, R / 2^S, D)`.

  `winograd`: 3x3 convs by Winograd F(2x2, 3x3) (`conv_general`)."""
  channels: Sequence[int] = (128, 256)
  latent_dim: int = 256
  num_res_layers: int = 6
  dtype: Any = jnp.float32
  winograd: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    conv = _conv_fn(self.winograd)
    for c in self.channels:
      # conv_general: the same conv via a space-to-depth (fast backward).
      x = nn.leaky_relu(nn.Conv(c, (4, 4), strides=2, padding=1,
                                dtype=self.dtype,
                                conv_general_dilated=conv)(x))
    c = self.channels[-1]
    x = nn.leaky_relu(nn.Conv(c, (3, 3), padding=1, dtype=self.dtype,
                              conv_general_dilated=conv)(x))
    for _ in range(self.num_res_layers):
      x = ResidualLayer(dtype=self.dtype, winograd=self.winograd)(x)
    x = nn.leaky_relu(x)
    return nn.leaky_relu(nn.Conv(self.latent_dim, (1, 1), dtype=self.dtype)(x))


class Decoder(nn.Module):
  """Latent `(B, r, r, D)` -> image `(B, r 2^S, r 2^S, 3)` in [-1, 1].

  `winograd`: 3x3 convs by Winograd F(2x2, 3x3) (`conv_general`)."""
  channels: Sequence[int] = (128, 256)
  num_res_layers: int = 6
  out_channels: int = 3
  dtype: Any = jnp.float32
  winograd: bool = False

  @nn.compact
  def __call__(self, z: Array) -> Array:
    z = z.astype(self.dtype)
    chans = list(self.channels)[::-1]
    x = nn.leaky_relu(nn.Conv(chans[0], (3, 3), padding=1, dtype=self.dtype,
                              conv_general_dilated=_conv_fn(self.winograd))(z))
    for _ in range(self.num_res_layers):
      x = ResidualLayer(dtype=self.dtype, winograd=self.winograd)(x)
    x = nn.leaky_relu(x)
    # Named as `nn.ConvTranspose` would be auto-named: same parameter tree.
    for i, c in enumerate(chans[1:]):
      x = nn.leaky_relu(SubpixelConvTranspose(
          c, dtype=self.dtype, name=f'ConvTranspose_{i}')(x))
    x = SubpixelConvTranspose(self.out_channels, dtype=self.dtype,
                              name='conv_out')(x)
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
    winograd: compute the 3x3 convs by Winograd F(2x2, 3x3) (`conv_general`).
  """
  channels: Sequence[int] = (128, 256)
  latent_dim: int = 256
  num_res_layers: int = 6
  bottleneck_kind: str = 'pca'
  bottleneck_kwargs: Optional[Dict[str, Any]] = None
  dtype: Any = jnp.float32
  warmup: bool = False
  winograd: bool = False

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent_dim, self.num_res_layers,
                           dtype=self.dtype, winograd=self.winograd)
    self.bottleneck = bottlenecks.get(self.bottleneck_kind)(
        **(self.bottleneck_kwargs or {}))
    self.decoder = Decoder(self.channels, self.num_res_layers, dtype=self.dtype,
                           winograd=self.winograd)
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
