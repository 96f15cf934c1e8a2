"""FSQ's bound at every level >= 2, L = 2 included, against hand computation
of the paper's reference formula (google-research `fsq/fsq.ipynb`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcavae.models import bottlenecks


def _reference_bound(z: float, level: int, eps: float = 1e-3) -> float:
  """The reference's `bound`, one scalar, in Python floats."""
  half_l = (level - 1) * (1 - eps) / 2
  offset = 0.5 if level % 2 == 0 else 0.0
  return math.tanh(z + math.tan(offset / half_l)) * half_l - offset


def test_level_two_by_hand():
  # L = 2: half_l = 0.4995, shift = tan(0.5 / 0.4995) = tan(1.001001...).
  shift = math.tan(0.5 / 0.4995)
  assert shift == pytest.approx(1.5608, abs=1e-4)
  z = np.asarray([-20.0, -3.0, -shift - 0.01, -shift + 0.01, 0.0, 3.0, 20.0],
                 np.float32)
  bound = np.asarray(bottlenecks.fsq_bound(z[:, None], (2,)))[:, 0]
  expected = [math.tanh(v + shift) * 0.4995 - 0.5 for v in z.tolist()]
  np.testing.assert_allclose(bound, expected, rtol=1e-5, atol=1e-6)
  assert bound[4] == pytest.approx(0.9156 * 0.4995 - 0.5, abs=1e-4)  # -0.0427
  # Rounds to -1 below z = -shift and to 0 above: both codes, never NaN.
  q = np.asarray(bottlenecks.fsq_quantize(jnp.asarray(z[:, None]), (2,)))[:, 0]
  np.testing.assert_array_equal(q, [-1, -1, -1, 0, 0, 0, 0])


@pytest.mark.parametrize('level', range(2, 10))
def test_every_level_is_finite_and_takes_its_values(level):
  z = np.linspace(-12, 12, 24_001, dtype=np.float32)
  bound = np.asarray(bottlenecks.fsq_bound(z[:, None], (level,)))[:, 0]
  assert np.all(np.isfinite(bound))
  # Monotone up to float32 rounding (a few ulps of values up to L / 2).
  assert np.all(np.diff(bound) >= -4e-7 * level)
  for v in (-7.0, -0.3, 0.0, 0.45, 2.0):
    assert float(bottlenecks.fsq_bound(jnp.full((1, 1), v), (level,))[0, 0]
                 ) == pytest.approx(_reference_bound(v, level), abs=2e-6)
  half = level // 2
  values = np.unique(np.round(bound))
  # Odd L: -(L-1)/2 .. (L-1)/2 (symmetric); even L: -L/2 .. L/2 - 1.
  np.testing.assert_array_equal(values, np.arange(level) - half)
  q = np.asarray(bottlenecks.fsq_quantize(jnp.asarray(z[:, None]), (level,)))
  np.testing.assert_allclose(np.unique(q), (np.arange(level) - half) / half,
                             atol=1e-6)


def test_fsq_layer_with_a_level_of_two_is_finite_with_finite_gradients():
  """`levels=2-5` used to give NaN codes (and a NaN loss at step 0)."""
  layer = bottlenecks.FSQBottleneck(levels=(2, 5))  # D = 2: no projection
  h = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2)) * 2
  variables = layer.init(jax.random.PRNGKey(1), h, train=True)

  def loss(x):
    out, _ = layer.apply(variables, x, train=True)
    return jnp.sum(out ** 2)

  (out, aux) = layer.apply(variables, h, train=True)
  grad = jax.grad(loss)(h)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  assert float(jnp.abs(grad).max()) > 0
  codes = np.asarray(aux['codes'])
  assert codes.min() >= 0 and codes.max() < 10
