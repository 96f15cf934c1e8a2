"""Pure functions of the online PCA bottleneck (DESIGN.md §3).

No Flax, no I/O, no config: array math only, so that every step can be tested
against closed forms and numpy. Shapes use a leading batch of "problems" where
useful: in `spatial` mode there is one PCA per latent location, so the basis is
`(L, D, Q)` and every function below accepts any number of leading axes.

The update, in the order the reference implementation applies it:

1. `fade_mean`: bias-corrected EMA ("geometric gamma-fade") of batch means.
2. `gha_update`: Sanger's generalized Hebbian step on centred samples.
3. `clip_update`: optional Frobenius-norm clip of the step (per problem).
4. `orthonormalize`: symmetric re-orthonormalisation `C (C^T C)^(-1/2)`, run
   every few updates. Always in float32.
5. `project`: `h_hat = (h - mu) C C^T + mu` with a stop-gradiented basis.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def fade_mean(mean: Array, fade_norm: Array, batch_mean: Array,
              alpha: float) -> Tuple[Array, Array]:
  """One step of the bias-corrected exponential moving average.

  `s <- alpha * s + 1`, `mu <- mu + (m - mu) / s`. With `s = 0` initially the
  first batch mean is taken exactly; after n batches
  `mu = sum_k alpha^(n-k) m_k / sum_j alpha^j` (j = 0..n-1).

  Args:
    mean: running mean `(..., D)`.
    fade_norm: the normaliser `s`, broadcastable against `mean[..., :1]`.
    batch_mean: this batch's mean, same shape as `mean`.
    alpha: fade factor in (0, 1].

  Returns:
    `(new_mean, new_fade_norm)`.
  """
  new_norm = alpha * fade_norm + 1.0
  new_mean = mean + (batch_mean - mean) / new_norm[..., None]
  return new_mean, new_norm


def sanger_delta(basis: Array, xc: Array) -> Array:
  """Sanger's rule direction `(xc^T y - C triu(y^T y)) / n`, `y = xc C`.

  Component j is pulled towards the residual of components 1..j, so the
  columns converge to eigenvectors of the sample covariance in decreasing
  order of eigenvalue.

  Args:
    basis: `(..., D, Q)`.
    xc: centred samples `(..., n, D)` with the same leading axes.

  Returns:
    `(..., D, Q)`, the update direction (not yet scaled by a learning rate).
  """
  n = xc.shape[-2]
  y = xc @ basis                                            # (..., n, Q)
  gram = jnp.swapaxes(y, -1, -2) @ y                        # (..., Q, Q)
  hebb = jnp.swapaxes(xc, -1, -2) @ y                       # (..., D, Q)
  return (hebb - basis @ jnp.triu(gram)) / max(n, 1)


def clip_update(delta: Array, max_norm: Optional[float]) -> Array:
  """Scales each problem's `(D, Q)` step down to Frobenius norm `max_norm`."""
  if max_norm is None:
    return delta
  norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=(-2, -1), keepdims=True))
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return delta * scale


def gha_update(basis: Array, xc: Array, lr: Array | float,
               max_norm: Optional[float] = None) -> Array:
  """One generalized Hebbian (Sanger) step: `C + lr * clip(dC)`.

  Args:
    basis: `(..., D, Q)` current basis.
    xc: centred samples `(..., n, D)`.
    lr: step size (scalar; may be traced, e.g. the optimizer's schedule).
    max_norm: optional Frobenius-norm clip of the step, per problem.

  Returns:
    The updated basis, same shape and dtype as `basis`.
  """
  delta = clip_update(sanger_delta(basis, xc), max_norm)
  return (basis + lr * delta).astype(basis.dtype)


def orthonormalize(basis: Array, eps: float = 1e-8) -> Array:
  """Symmetric (Löwdin) re-orthonormalisation `C (C^T C)^(-1/2)`.

  Of all orthonormal bases it is the closest to `C` in Frobenius norm, so it
  removes drift without reordering or rotating the components. Eigenvalues of
  the Gram matrix are clamped at `eps`. Computed in float32.

  Args:
    basis: `(..., D, Q)`.
    eps: clamp for the Gram eigenvalues.

  Returns:
    `(..., D, Q)` with orthonormal columns.
  """
  c = basis.astype(jnp.float32)
  gram = jnp.swapaxes(c, -1, -2) @ c
  gram = 0.5 * (gram + jnp.swapaxes(gram, -1, -2))
  lam, u = jnp.linalg.eigh(gram)
  inv_sqrt = jax.lax.rsqrt(jnp.maximum(lam, eps))
  s_inv = (u * inv_sqrt[..., None, :]) @ jnp.swapaxes(u, -1, -2)
  return (c @ s_inv).astype(basis.dtype)


def orthonormality_error(basis: Array) -> Array:
  """`max |C^T C - I|` over all problems (0 for an orthonormal basis)."""
  c = basis.astype(jnp.float32)
  gram = jnp.swapaxes(c, -1, -2) @ c
  eye = jnp.eye(c.shape[-1], dtype=jnp.float32)
  return jnp.max(jnp.abs(gram - eye))


def project(h: Array, basis: Array, mean: Array) -> Tuple[Array, Array]:
  """Coefficients and reconstruction `(h - mu) C`, `y C^T + mu`.

  Args:
    h: samples `(..., n, D)`.
    basis: `(..., D, Q)`.
    mean: `(..., D)`.

  Returns:
    `(coefficients (..., n, Q), reconstruction (..., n, D))`.
  """
  y = (h - mean[..., None, :]) @ basis
  return y, reconstruct(y, basis, mean)


def reconstruct(y: Array, basis: Array, mean: Array) -> Array:
  """`y C^T + mu`: samples from (possibly quantized or shifted) coefficients.

  Args:
    y: coefficients `(..., n, Q)`.
    basis: `(..., D, Q)`.
    mean: `(..., D)`.

  Returns:
    `(..., n, D)`.
  """
  return y @ jnp.swapaxes(basis, -1, -2) + mean[..., None, :]


def random_orthonormal(key: Array, shape: Tuple[int, ...]) -> Array:
  """A random `(..., D, Q)` basis with orthonormal columns (QR of a Gaussian)."""
  q, r = jnp.linalg.qr(jax.random.normal(key, shape, jnp.float32))
  # Fix the sign ambiguity of QR so the distribution is Haar.
  signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
  return q * jnp.where(signs == 0, 1.0, signs)[..., None, :]


def exact_pca(x: Array, num_components: int) -> Tuple[Array, Array, Array]:
  """Mean, top-Q eigenvectors and eigenvalues of the sample covariance.

  Used to initialise the basis from collected latents (warm-up) and as the
  reference in tests. Sign convention: each column's largest-magnitude entry
  is positive.

  Args:
    x: `(..., n, D)` samples.
    num_components: Q.

  Returns:
    `(mean (..., D), basis (..., D, Q), variances (..., Q))`, variances in
    decreasing order.
  """
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-2)
  xc = x - mean[..., None, :]
  cov = jnp.swapaxes(xc, -1, -2) @ xc / x.shape[-2]
  lam, vec = jnp.linalg.eigh(cov)
  lam = lam[..., ::-1][..., :num_components]
  vec = vec[..., :, ::-1][..., :num_components]
  idx = jnp.argmax(jnp.abs(vec), axis=-2, keepdims=True)
  sign = jnp.sign(jnp.take_along_axis(vec, idx, axis=-2))
  return mean, vec * sign, lam
