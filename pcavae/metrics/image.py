"""Per-image PSNR and SSIM (dm-pix) on images in [0, 1]."""

import dm_pix as pix
import jax
import jax.numpy as jnp

Array = jax.Array


def to_unit(x: Array) -> Array:
  """[-1, 1] model range -> [0, 1], clipped."""
  return jnp.clip((x.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def psnr(x: Array, y: Array) -> Array:
  """PSNR in dB per image of NHWC `x`, `y` in [0, 1] (peak 1)."""
  return pix.psnr(x, y)


def ssim(x: Array, y: Array) -> Array:
  """SSIM per image of NHWC `x`, `y` in [0, 1] (Gaussian 11x11, sigma 1.5)."""
  return pix.ssim(x, y, max_val=1.0)
