"""Pure loss functions."""

import jax
import jax.numpy as jnp

Array = jax.Array


def mse(x: Array, y: Array) -> Array:
  """Mean squared error over every element (the reference's loss)."""
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def l1(x: Array, y: Array) -> Array:
  """Mean absolute error over every element."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


RECONSTRUCTION = {'mse': mse, 'l1': l1}
