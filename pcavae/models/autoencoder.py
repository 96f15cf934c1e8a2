"""Encoder, decoder and the autoencoder around an interchangeable bottleneck.

The architecture is the PCA-VAE reference's (docs/design.md §3): per stage a 4x4
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


def _conv_s2_s2d(x: Array, kernel: Array, *, winograd: bool = False,
                 precision=None) -> Array:
  """4x4 stride-2 conv with padding 1 as a 2x2 stride-1 conv after a
  space-to-depth: `pad(x, 1)` of `(2h + 2)` rows becomes `h + 1` rows of 2x2
  pixel blocks, and tap `(2a + dy, 2b + dx)` of the 4x4 kernel is tap `(a, b)`
  of the 2x2 kernel on block channel `(dy, dx)`. The same sums, no strides,
  so the backward pass needs no dilated (mostly zero) convolutions. With
  `winograd`, the 2x2 conv by F(2x2, 2x2) (`_conv2x2_valid`)."""
  kh, kw, cin, cout = kernel.shape
  assert (kh, kw) == (4, 4), kernel.shape
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  k2 = k2.reshape(2, 2, 4 * cin, cout)
  return _conv2x2_valid(_space_to_depth(x), k2, winograd=winograd,
                        precision=precision)


# Winograd minimal filtering F(m, r) (Lavin & Gray, 2016): an r-tap filter
# on m outputs from m + r - 1 inputs with m + r - 1 products, as
# y = A^T [(G g) . (B^T d)]. The transforms below are these matrices; every
# entry is 0, +-1 or 1/2, so the float32 rounding stays within 2x of the
# direct sums' (tests/test_perf_equivalence.py).
_F23 = (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),   # B^T
        ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),            # G
        ((1, 1, 1, 0), (0, 1, -1, -1)))                                 # A^T
_F22 = (((1, -1, 0), (0, 1, 0), (0, -1, 1)),
        ((1, 0), (1, 1), (0, 1)),
        ((1, 1, 0), (0, 1, 1)))


def _combine(matrix, xs):
  """`[sum_j matrix[i][j] xs[j] for i]`, skipping zero terms."""
  out = []
  for row in matrix:
    acc = None
    for coef, v in zip(row, xs):
      if coef == 0:
        continue
      term = v if coef == 1 else -v if coef == -1 else coef * v
      acc = term if acc is None else acc + term
    out.append(acc)
  return out


def _conv_winograd(xp: Array, kernel: Array, transforms, *,
                   precision=None) -> Array:
  """VALID stride-1 NHWC conv of `xp` with an r x r `kernel` by Winograd
  F(m x m, r x r) (`transforms` = (B^T, G, A^T), e.g. `_F23`).

  Each m x m output tile is `A^T [(G k G^T) . (B^T d B)] A` of its
  (m + r - 1)^2 input tile `d`: (m + r - 1)^2 products per tile and channel
  pair instead of (m r)^2, as that many batched products
  `(tiles, C_in) @ (C_in, C_out)`. The same function as the direct conv in
  exact arithmetic. Written in plain array ops, so its gradients are
  Winograd convolutions too (transposed transforms around two batched
  products). The output size must be a multiple of m.
  """
  bt, g, at = transforms
  a, m, r = len(bt), len(at), len(g[0])
  b, hp, wp, c = xp.shape
  h, w = hp - r + 1, wp - r + 1
  assert h % m == 0 and w % m == 0 and kernel.shape[:2] == (r, r), (
      xp.shape, kernel.shape, m)
  th, tw = h // m, w // m
  v = []
  for row in _combine(bt, [xp[:, u:u + h:m] for u in range(a)]):
    v.extend(_combine(bt, [row[:, :, u:u + w:m] for u in range(a)]))
  v = jnp.stack(v).reshape(a * a, b * th * tw, c)          # (a^2, tiles, C)
  u = []
  for gi in _combine(g, [kernel[i] for i in range(r)]):
    u.extend(_combine(g, [gi[j] for j in range(r)]))
  prod = jnp.matmul(v, jnp.stack(u), precision=precision)  # (a^2, tiles, O)
  prod = prod.reshape(a, a, b, th, tw, prod.shape[-1])
  y = [jnp.stack(_combine(at, [pi[j] for j in range(a)]), axis=3)
       for pi in _combine(at, [prod[i] for i in range(a)])]  # (b,th,tw,m,O)
  return jnp.stack(y, axis=2).reshape(b, h, w, -1)         # rows (th, m)


def _conv3x3_winograd(x: Array, kernel: Array, *, precision=None) -> Array:
  """3x3 stride-1 padding-1 conv by F(2x2, 3x3) (even H, W): 16 products
  per 2x2 output tile instead of 36."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return _conv_winograd(xp, kernel, _F23, precision=precision)


def _conv2x2_valid(x: Array, kernel: Array, *, winograd: bool,
                   precision=None) -> Array:
  """VALID stride-1 2x2 conv, by F(2x2, 2x2) (9 products per 2x2 output
  tile instead of 16) when `winograd` and `_winograd_pays(kernel)`. An odd
  output size is computed one larger on a zero row or column and cropped."""
  if not (winograd and _winograd_pays(kernel)):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                        dimension_numbers=_DN,
                                        precision=precision)
  h, w = x.shape[1] - 1, x.shape[2] - 1
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  return _conv_winograd(x, kernel, _F22, precision=precision)[:, :h, :w]


def _winograd_pays(kernel: Array) -> bool:
  """Whether both channel counts reach `_WINOGRAD_MIN_CHANNELS`. Measured
  fwd+bwd on XLA:CPU (2-core AVX-512 EPYC), batch 16, 8-32 px: at 64
  channels Winograd is 1.2-1.5x slower than the direct conv (the transforms
  cost more than the products they save), at 128 it is 1.1-1.2x faster, at
  256 1.3-1.5x; and it doubles a tiny model's compile time."""
  return min(kernel.shape[2:]) >= _WINOGRAD_MIN_CHANNELS


_WINOGRAD_MIN_CHANNELS = 128


def conv_general(lhs: Array, rhs: Array, window_strides, padding,
                 lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count: int = 1,
                 precision=None, *, winograd: bool = False,
                 **kwargs) -> Array:
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`.

  Same parameters and the same function; two NHWC configurations take a
  faster route (tests/test_perf_equivalence.py):
  - the 4x4 stride-2 padding-1 conv runs as `_conv_s2_s2d` (same sums; its
    backward pass has no dilated convolutions), with `winograd=True` its
    2x2 conv by F(2x2, 2x2) (1.78x fewer multiplies);
  - with `winograd=True`, the 3x3 stride-1 padding-1 conv on even H, W runs
    as `_conv3x3_winograd` (2.25x fewer multiplies).
  Winograd (`config.model.conv_algorithm`) is used only where
  `_winograd_pays` (at least 128 input and output channels) and differs
  from the direct sums by float32 rounding only. Every other configuration
  goes to `lax.conv_general_dilated`.
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
    return _conv_s2_s2d(lhs, rhs, winograd=winograd, precision=precision)
  if (simple and winograd and tuple(window_strides) == (1, 1)
      and rhs.shape[:2] == (3, 3) and _winograd_pays(rhs)):
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


def _conv_t_subpixel(x: Array, kernel: Array, *, winograd: bool = False,
                     precision=None) -> Array:
  """`lax.conv_transpose(x, kernel, (2, 2), padding 2)` for a 4x4 kernel (the
  PyTorch `ConvTranspose2d(k=4, s=2, p=1)`), as one 2x2 stride-1 conv with 4x
  the output channels followed by a depth-to-space ("sub-pixel" form).

  Output row `o` of the transposed conv only sees input rows `i` with
  `o + k - 2 = 2 i`, so on `xp = pad(x, 1)`: with `o + 1 = 2 n + p`,
  `y[o] = xp[n] w[1 - p] + xp[n + 1] w[3 - p]`, a 2x2 window at `n` whose
  taps depend on the phase `p`. The dilated formulation multiplies 3 zeros
  for every input value and its weight gradient is very slow on XLA:CPU.
  With `winograd`, the 2x2 conv by F(2x2, 2x2) (`_conv2x2_valid`).
  """
  kh, kw, cin, cout = kernel.shape
  assert (kh, kw) == (4, 4), kernel.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # kernel[2a + q] with q = 1 - p: (a, q, b, r, i, o) -> (a, b, i, p, p', o).
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout)[:, ::-1, :, ::-1]
  k2 = k2.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
  z = _conv2x2_valid(xp, k2, winograd=winograd, precision=precision)
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
  winograd: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (4, 4, x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,),
                      self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    return _conv_t_subpixel(x, kernel, winograd=self.winograd) + bias


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

  `winograd`: Winograd convs (`conv_general`)."""
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

  `winograd`: Winograd convs (`conv_general`, `SubpixelConvTranspose`)."""
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
          c, dtype=self.dtype, winograd=self.winograd,
          name=f'ConvTranspose_{i}')(x))
    x = SubpixelConvTranspose(self.out_channels, dtype=self.dtype,
                              winograd=self.winograd, name='conv_out')(x)
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
    winograd: compute the 3x3 and the (space-to-depth, sub-pixel) 2x2 convs
      by Winograd's minimal filtering (`conv_general`).
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
