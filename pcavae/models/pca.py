"""Pure functions of the online PCA bottleneck (docs/design.md §3).

No Flax, no I/O, no config: array math only, so that every step can be tested
against closed forms and numpy. Shapes use a leading batch of "problems" where
useful: in `spatial` mode there is one PCA per latent location, so the basis is
`(L, D, Q)` and every function below accepts any number of leading axes.

The update, in the order the reference implementation applies it:

1. `fade_mean`: bias-corrected EMA ("geometric gamma-fade") of batch means.
2. `gha_update`: Sanger's generalized Hebbian step on centred samples.
3. `clip_update`: optional Frobenius-norm clip of the step (per problem).
4. `orthonormalize`: symmetric re-orthonormalisation `C (C^T C)^(-1/2)`, run
   every few updates (`orthonormalize_qr`: the Gram-Schmidt one, by
   Cholesky-QR, cheaper). Always in float32.
5. `project`: `h_hat = (h - mu) C C^T + mu` with a stop-gradiented basis.

Every matrix product here runs at full float32 precision on every backend
(`float32_matmuls`), whatever the model's compute dtype.
"""

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def float32_matmuls(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Traces `fn` with every matmul at `Precision.HIGHEST` (full float32).

  XLA's default matmul precision is TF32 on Ampere and later GPUs and bf16
  passes on TPUs: a 10-bit (or 8-bit) mantissa, which puts errors of ~1e-3
  into a Gram matrix and breaks orthonormality, the Sanger trajectory and the
  exact PCA the fidelity metrics compare against. JAX resolves a matmul's
  default precision when it is traced, so the context below reaches every
  product traced inside `fn`, including those of the functions it calls,
  whatever the caller's default. Every function of this module that multiplies
  matrices carries it, the projection included: its coefficients are what the
  codec quantizes and what the fidelity figures read.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.default_matmul_precision('highest'):
      return fn(*args, **kwargs)
  return wrapped


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


@float32_matmuls
def sanger_delta(basis: Array, xc: Array) -> Array:
  """Sanger's rule direction `(xc^T y - C triu(y^T y)) / n`, `y = xc C`.

  Component j is pulled towards the residual of components 1..j, so the
  columns converge to eigenvectors of the sample covariance in decreasing
  order of eigenvalue.

  With few samples (n well below Q) the `D x Q x Q` product `C triu(y^T y)`
  dominates; it is then computed in column blocks of the basis (the same sums
  in another order, see `_sanger_delta_blocked`): about `D Q (2n + k)`
  multiply-adds instead of `D Q Q`.

  Args:
    basis: `(..., D, Q)`.
    xc: centred samples `(..., n, D)` with the same leading axes.

  Returns:
    `(..., D, Q)`, the update direction (not yet scaled by a learning rate).
  """
  n = xc.shape[-2]
  q = basis.shape[-1]
  block = _sanger_block(n, q)
  if block is not None:
    return _sanger_delta_blocked(basis, xc, block)
  y = xc @ basis                                            # (..., n, Q)
  gram = jnp.swapaxes(y, -1, -2) @ y                        # (..., Q, Q)
  hebb = jnp.swapaxes(xc, -1, -2) @ y                       # (..., D, Q)
  return (hebb - basis @ jnp.triu(gram)) / max(n, 1)


def _sanger_block(n: int, q: int) -> Optional[int]:
  """Column-block size for `_sanger_delta_blocked`, or None where the direct
  formula is cheaper (many samples per problem, or a small Q)."""
  k = 32
  if q < 2 * k or q % k:
    return None
  d_cost_direct = q + n        # per D*Q: hebb (n) and C triu(G) (Q)
  d_cost_blocked = 2 * n + k   # per D*Q: C_j Y_j^T and R_j Y_j (n each), diag
  return k if 2 * d_cost_blocked <= d_cost_direct else None


@float32_matmuls
def _sanger_delta_blocked(basis: Array, xc: Array, k: int) -> Array:
  """`sanger_delta` over column blocks j of width k.

  With `y = xc C`, `G = y^T y = sum_b y_b y_b^T` has rank <= n, so its
  off-diagonal blocks are `G_ij = y_i^T y_j` and
  `(C triu(G))_j = sum_{i<j} C_i y_i^T y_j + C_j triu(G_jj)`. Hence
  `dC_j = R_j y_j - C_j triu(G_jj)` with `R_j = xc^T - sum_{i<j} C_i y_i^T`,
  the samples' residual after the components before block j: Sanger's rule
  itself, one block at a time. One product `C_j [triu(G_jj) | y_j^T]` per
  block gives both the diagonal term and the next residual.
  """
  n = xc.shape[-2]
  q = basis.shape[-1]
  y = xc @ basis                                            # (..., n, Q)
  resid = jnp.swapaxes(xc, -1, -2)                          # (..., D, n)
  out = []
  for j in range(q // k):
    cj = basis[..., j * k:(j + 1) * k]                      # (..., D, k)
    yj = y[..., j * k:(j + 1) * k]                          # (..., n, k)
    yjt = jnp.swapaxes(yj, -1, -2)                          # (..., k, n)
    gj = jnp.triu(yjt @ yj)                                 # (..., k, k)
    prod = cj @ jnp.concatenate([gj, yjt], axis=-1)         # (..., D, k + n)
    out.append(resid @ yj - prod[..., :k])
    resid = resid - prod[..., k:]
  return jnp.concatenate(out, axis=-1) / max(n, 1)


@float32_matmuls
def normalized_sanger_delta(basis: Array, xc: Array,
                            running_var: Optional[Array] = None) -> Array:
  """`sanger_delta` with column j divided by the variance of coefficient j.

  The raw step scales with the square of the latent's scale, so a fixed rate
  that is safe at one scale diverges at another. Dividing column j by
  `v_j = max(mean(y_j^2), running_var_j)` (this batch's second moment of the
  coefficient, or its running variance where that is larger) makes the step
  invariant to the scale of `xc`: scaling `xc` by s scales both the
  direction and `v_j` by s^2. Near convergence component j then turns
  towards eigenvector i at the rate `lr (1 - lambda_i / lambda_j)`, set by
  the relative eigengap alone, and the column norm follows
  `r <- r + lr (1 / r - r)` (Newton's iteration for r = 1 at lr = 1/2):
  stable for every rate in (0, 1]. Taking the larger of the two variances
  never makes the step longer than the batch-normalised one (whose stability
  this is) and damps it when a batch happens to be small in a direction.
  `v_j` is floored at 1e-6 of the mean per-dimension variance (relative, so
  still scale-free) for a component in a direction the data never visit.

  Args:
    basis: `(..., D, Q)`.
    xc: centred samples `(..., n, D)`.
    running_var: `(..., Q)` running coefficient variances, or None.

  Returns:
    `(..., D, Q)`, the update direction (not yet scaled by a rate).
  """
  n = max(xc.shape[-2], 1)
  y = xc @ basis
  var = jnp.sum(jnp.square(y), axis=-2) / n                    # (..., Q)
  if running_var is not None:
    var = jnp.maximum(var, running_var)
  per_dim = jnp.sum(jnp.square(xc), axis=(-2, -1)) / (n * xc.shape[-1])
  floor = jnp.maximum(1e-6 * per_dim, jnp.finfo(jnp.float32).tiny)
  var = jnp.maximum(var, floor[..., None])
  return sanger_delta(basis, xc) / var[..., None, :]


def clip_update(delta: Array, max_norm: Optional[float]) -> Array:
  """Scales each problem's `(D, Q)` step down to Frobenius norm `max_norm`."""
  if max_norm is None:
    return delta
  norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=(-2, -1), keepdims=True))
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return delta * scale


@float32_matmuls
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


@float32_matmuls
def orthonormalize(basis: Array, eps: float = 1e-8,
                   fixed_iterations: bool = False) -> Array:
  """Symmetric (Löwdin) re-orthonormalisation `C (C^T C)^(-1/2)`.

  Of all orthonormal bases it is the closest to `C` in Frobenius norm, so it
  removes drift without reordering or rotating the components. Eigenvalues of
  the Gram matrix are clamped at `eps`. Computed in float32.

  `C (C^T C)^(-1/2)` is the polar factor of `C`. It is computed by the
  Newton-Schulz iteration `X <- X (3 I - X^T X) / 2` (quadratic convergence,
  only matrix products), which converges to it from `X = C / s` whenever
  `sigma_max(C / s)^2 < 3`; a batched eigendecomposition is many times
  slower on CPU. Each iteration costs two `(D, Q) x (Q, Q)` products (the
  update and the next Gram matrix), so the count matters (at
  `spatial16` with Q = D = 256 one product is 4.3 GMAC):

  - The start is scaled so that `lambda_max(C^T C / s^2) <= _NS_START`
    (1.8, inside the basin `< 3`), using an upper bound of `lambda_max` (the
    largest absolute row sum of the Gram matrix). After a rate-0.1 `sanger`
    step the Gram's eigenvalues lie in about [0.9, 3]; scaling them to at
    most 1 instead would slow the small singular values down by a factor
    of about 1.3 and cost an iteration or two.
  - The error is measured as `e = min(||G - I||_F, max row sum |G - I|)`, an
    upper bound of the spectral norm of `G - I`. One more iteration maps
    each eigenvalue `1 + e_i` of the Gram to `1 - 3 e_i^2 / 4 + e_i^3 / 4`,
    so once `e <= _NS_FINAL` (1e-3) a last update reaches float32 rounding
    (< 1e-6) without forming its Gram matrix: one product fewer, and no
    extra iteration just to see the test pass.

  Where it has not converged (a rank-deficient basis, where the clamp
  matters) the result comes from the eigendecomposition
  (`_orthonormalize_eigh`).

  Args:
    basis: `(..., D, Q)`.
    eps: clamp for the Gram eigenvalues.
    fixed_iterations: run `_NS_FIXED_ITERS` iterations instead of stopping
      once converged (then the last update, and the eigendecomposition
      where that count did not reach `_NS_FINAL`). For a basis split over
      devices: there the stopping test of the data-dependent loop
      deadlocked XLA:CPU (two forced devices, the `spatial16` basis split by
      location, `experiments/throughput.py`), while a fixed count ran. The
      same result to rounding (an iteration past convergence leaves X
      orthonormal).

  Returns:
    `(..., D, Q)` with orthonormal columns.
  """
  c = basis.astype(jnp.float32)
  q = c.shape[-1]
  eye = jnp.eye(q, dtype=jnp.float32)
  gram = jnp.swapaxes(c, -1, -2) @ c
  # lambda_max(C^T C) <= its largest absolute row sum; scale only where
  # needed so nearly orthonormal bases start at sigma ~ 1.
  bound = jnp.max(jnp.sum(jnp.abs(gram), axis=-1), axis=-1)
  scale2 = jnp.where(bound > _NS_START, _NS_START / bound, 1.0)  # (...,)
  x = c * jnp.sqrt(scale2)[..., None, None]
  g = gram * scale2[..., None, None]

  def err_of(g):
    e = jnp.abs(g - eye)
    row = jnp.max(jnp.sum(e, axis=-1), axis=-1)
    frob = jnp.sqrt(jnp.sum(jnp.square(e), axis=(-2, -1)))
    return jnp.max(jnp.minimum(row, frob))

  def update(x, g):
    return x @ (1.5 * eye - 0.5 * g)

  def body(carry):
    x, g, err, _, it = carry
    x = update(x, g)
    g = jnp.swapaxes(x, -1, -2) @ x
    return x, g, err_of(g), err, it + 1

  def cond(carry):
    _, _, err, prev, it = carry
    # Until one last update reaches rounding, or no longer shrinking once
    # near (far from it the bound need not shrink at every iteration, while
    # the small singular values grow).
    shrinking = (err < 0.9 * prev) | (err > 0.25)
    return (err > _NS_FINAL) & shrinking & (it < _NS_MAX_ITERS)

  init = (x, g, err_of(g), jnp.asarray(jnp.inf, jnp.float32),
          jnp.zeros((), jnp.int32))
  if fixed_iterations:
    x, g, err, _, _ = jax.lax.fori_loop(0, _NS_FIXED_ITERS,
                                        lambda _, carry: body(carry), init)
  else:
    x, g, err, _, _ = jax.lax.while_loop(cond, body, init)
  # The last update outside the cond: the cond stays a choice between eigh
  # and pass-through, which a basis split over devices needs.
  x = update(x, g)
  x = jax.lax.cond(err > _NS_FINAL,
                   lambda: _orthonormalize_eigh(c, eps), lambda: x)
  return x.astype(basis.dtype)


# Newton-Schulz starts with lambda_max(X^T X) <= _NS_START (the iteration
# converges for < 3), runs until the error bound e of X^T X - I is at most
# _NS_FINAL or stops shrinking (at most _NS_MAX_ITERS iterations; exactly
# _NS_FIXED_ITERS with `fixed_iterations`), then takes one last update, which
# leaves an error below 3 e^2 / 4 + float32 rounding (~1e-6). A basis whose
# error stayed above _NS_FINAL (rank-deficient or badly conditioned) gets
# the eigendecomposition's result instead. _NS_FIXED_ITERS stays at
# _NS_MAX_ITERS: with 9 (enough for a Gram spectrum spread over a factor of
# about 20) the 2-device `spatial16` step of experiments/throughput.py hung
# at 0% CPU, most likely because the first step's spread (about 12 from a
# random basis) sent the cond to the eigendecomposition, which the split
# basis did not complete on XLA:CPU; with 16 the step runs.
_NS_START = 1.8
_NS_FINAL = 1e-3
_NS_MAX_ITERS = 16
_NS_FIXED_ITERS = _NS_MAX_ITERS


@float32_matmuls
def _orthonormalize_eigh(c: Array, eps: float) -> Array:
  """`C (C^T C)^(-1/2)` through the eigendecomposition of the Gram matrix."""
  gram = jnp.swapaxes(c, -1, -2) @ c
  gram = 0.5 * (gram + jnp.swapaxes(gram, -1, -2))
  lam, u = jnp.linalg.eigh(gram)
  inv_sqrt = jax.lax.rsqrt(jnp.maximum(lam, eps))
  s_inv = (u * inv_sqrt[..., None, :]) @ jnp.swapaxes(u, -1, -2)
  return c @ s_inv


@float32_matmuls
def orthonormalize_qr(basis: Array, eps: float = 1e-8,
                      fixed_iterations: bool = False) -> Array:
  """Gram-Schmidt re-orthonormalisation by Cholesky-QR: `C R^-1`, `C = Q R`.

  `R` is the Cholesky factor of the Gram matrix (`C^T C = R^T R`), so the
  result is the Q factor of `C` with a positive diagonal: column 1 keeps its
  direction, column j loses its parts along columns 1..j-1 and is rescaled.
  That is the order of Sanger's deflation (component j learns from the
  residual of components 1..j), so a Sanger fixed point (orthonormal
  eigenvectors, `R = I`) is left as it is, as by `orthonormalize`.

  It costs one Gram matrix, the factorisation with its inverse
  (`cholesky_inverse`: about `2 Q^3 / 3` multiply-adds, in matrix products)
  and one `(D, Q) x (Q, Q)` product: at `spatial16` (Q = D = 256, 256
  locations) about a sixth of the Newton-Schulz polar factor after a
  rate-0.1 `sanger` step (docs/speed.md), with no data-dependent loop and no
  LAPACK call (batched LAPACK kernels deadlocked XLA:CPU with several
  devices in one process). Its orthonormality error grows with `cond(C)^2`
  times float32 rounding (about 2e-6 after a step that spread the Gram's
  eigenvalues over [0.5, 16]). Where the factorisation fails or `R`'s
  diagonal shows a (nearly) rank-deficient basis (`min r_jj^2 < 1e-6 max
  r_jj^2` in some problem), the result is the symmetric `orthonormalize`,
  which clamps the Gram's eigenvalues at `eps`.

  Args:
    basis: `(..., D, Q)`.
    eps: the clamp of the fallback.
    fixed_iterations: passed to the fallback (`orthonormalize`).

  Returns:
    `(..., D, Q)` with orthonormal columns, in `basis`'s dtype.
  """
  c = basis.astype(jnp.float32)
  gram = jnp.swapaxes(c, -1, -2) @ c
  gram = 0.5 * (gram + jnp.swapaxes(gram, -1, -2))
  _, inverse = cholesky_inverse(gram)            # gram = L L^T, L^-1
  diag = 1.0 / jnp.diagonal(inverse, axis1=-2, axis2=-1)   # L's diagonal
  well = jnp.all(jnp.isfinite(inverse)) & jnp.all(
      jnp.square(jnp.min(diag, axis=-1))
      >= _QR_RANK_TOLERANCE * jnp.square(jnp.max(diag, axis=-1)))
  # C = Q L^T  ->  Q = C L^-T
  x = jax.lax.cond(well, lambda: c @ jnp.swapaxes(inverse, -1, -2),
                   lambda: orthonormalize(c, eps, fixed_iterations))
  return x.astype(basis.dtype)


# `orthonormalize_qr` hands a basis to the symmetric `orthonormalize` when
# min r_jj^2 / max r_jj^2 of its Cholesky factor is below this (a Gram
# condition number of at least 1e6: float32 Cholesky-QR would leave an
# orthonormality error of order 0.1 there).
_QR_RANK_TOLERANCE = 1e-6
# `cholesky_inverse` factorises blocks up to this size column by column.
_CHOLESKY_BASE = 16


@float32_matmuls
def cholesky_inverse(a: Array) -> Tuple[Array, Array]:
  """`(L, L^-1)` with `a = L L^T`, `L` lower triangular, for SPD `(..., n, n)`.

  Recursive 2 x 2 blocking down to `_CHOLESKY_BASE` columns, so that almost
  all the work is matrix products: `L11 = chol(A11)`, `L21 = A21 L11^-T`,
  `L22 = chol(A22 - L21 L21^T)`, and the inverse's off-diagonal block
  `-L22^-1 L21 L11^-1`. Written in jnp rather than with LAPACK: XLA:CPU's
  batched LAPACK kernels (Cholesky, triangular solve, eigh) deadlocked with
  several devices in one process (two forced devices, a batch of 2 or more
  problems per device), so this runs the same way on one device or many.
  Where `a` is not positive definite the result holds NaN.
  """
  n = a.shape[-1]
  if n <= _CHOLESKY_BASE:
    return _cholesky_inverse_columns(a)
  h = n // 2
  a11, a21, a22 = a[..., :h, :h], a[..., h:, :h], a[..., h:, h:]
  l11, i11 = cholesky_inverse(a11)
  l21 = a21 @ jnp.swapaxes(i11, -1, -2)
  l22, i22 = cholesky_inverse(a22 - l21 @ jnp.swapaxes(l21, -1, -2))
  i21 = -(i22 @ l21) @ i11
  zeros = jnp.zeros(a.shape[:-2] + (h, n - h), a.dtype)
  low = jnp.concatenate([jnp.concatenate([l11, zeros], -1),
                         jnp.concatenate([l21, l22], -1)], -2)
  inv = jnp.concatenate([jnp.concatenate([i11, zeros], -1),
                         jnp.concatenate([i21, i22], -1)], -2)
  return low, inv


@float32_matmuls
def _cholesky_inverse_columns(a: Array) -> Tuple[Array, Array]:
  """`cholesky_inverse` of a small block, one column (and row) at a time.

  Loops rather than unrolled steps: unrolled, the 2 Q leaf steps of a
  Q = 256 factorisation quadrupled the train step's compile time.
  """
  n = a.shape[-1]
  idx = jnp.arange(n)
  zeros = jnp.zeros_like(a)

  def column(j, low):
    # Columns >= j of `low` are still zero, so the full product is the sum
    # over the columns before j.
    v = a[..., :, j] - (low @ low[..., j, :, None])[..., 0]
    d = jnp.sqrt(v[..., j])
    return low.at[..., :, j].set(jnp.where(idx >= j, v / d[..., None], 0.0))

  low = jax.lax.fori_loop(0, n, column, zeros)

  def row(i, inv):
    # Rows >= i of `inv` are still zero: e_i - sum_{k < i} L_ik (L^-1)_k.
    r = (idx == i).astype(a.dtype) - (low[..., i, None, :] @ inv)[..., 0, :]
    return inv.at[..., i, :].set(r / low[..., i, i, None])

  return low, jax.lax.fori_loop(0, n, row, zeros)


@float32_matmuls
def orthonormality_error(basis: Array) -> Array:
  """`max |C^T C - I|` over all problems (0 for an orthonormal basis)."""
  c = basis.astype(jnp.float32)
  gram = jnp.swapaxes(c, -1, -2) @ c
  eye = jnp.eye(c.shape[-1], dtype=jnp.float32)
  return jnp.max(jnp.abs(gram - eye))


@float32_matmuls
def project(h: Array, basis: Array, mean: Array) -> Tuple[Array, Array]:
  """Coefficients and reconstruction `(h - mu) C`, `y C^T + mu`.

  Args:
    h: samples `(..., n, D)`.
    basis: `(..., D, Q)`.
    mean: `(..., D)`.

  Returns:
    `(coefficients (..., n, Q), reconstruction (..., n, D))`.
  """
  y, rec = _project_centered(h - mean[..., None, :], basis)
  return y, rec + mean[..., None, :]


@jax.custom_vjp
@float32_matmuls
def _project_centered(xc: Array, basis: Array) -> Tuple[Array, Array]:
  """`(xc C, xc C C^T)` with hand-written derivatives.

  Same values and gradients as the plain expressions; the custom VJP only
  fixes how the products are laid out. `C^T` is materialised once (behind an
  optimization barrier, so XLA keeps it) and every product, forward and
  backward, then contracts its right operand's leading matrix axis: with `C`
  and `C^T` both at hand no product needs a transposed operand, which on
  XLA:CPU costs about twice as much for these batched, thin products
  (n << D). Forward-mode differentiation (jvp) is not defined for it.
  """
  return _project_fwd(xc, basis)[0]


@float32_matmuls
def _project_fwd(xc, basis):
  basis_t = jax.lax.optimization_barrier(jnp.swapaxes(basis, -1, -2))
  y = xc @ basis
  return (y, y @ basis_t), (xc, basis, basis_t, y)


@float32_matmuls
def _project_bwd(res, cotangents):
  xc, basis, basis_t, y = res
  g_y, g_rec = cotangents
  g_y = g_y + g_rec @ basis                       # rec = y C^T
  g_xc = g_y @ basis_t                            # y = xc C
  g_basis = (jnp.swapaxes(xc, -1, -2) @ g_y
             + jnp.swapaxes(g_rec, -1, -2) @ y)
  return _sum_to_shape(g_xc, xc.shape), _sum_to_shape(g_basis, basis.shape)


def _sum_to_shape(x: Array, shape: Tuple[int, ...]) -> Array:
  """Sums a cotangent over the axes that broadcasting added or expanded."""
  lead = x.ndim - len(shape)
  x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape))
               if b == 1 and a != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


_project_centered.defvjp(_project_fwd, _project_bwd)


@float32_matmuls
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


@float32_matmuls
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


@float32_matmuls
def covariance_update(cov: Array, cov_norm: Array, xc: Array,
                      alpha: float) -> Tuple[Array, Array]:
  """Bias-corrected EMA of the covariance of centred samples (`fade_mean`'s
  rule applied to `xc^T xc / n`).

  Args:
    cov: running covariance `(..., D, D)`.
    cov_norm: its normaliser `s`, `(...)`.
    xc: centred samples `(..., n, D)`.
    alpha: fade factor in (0, 1]; the covariance averages over about
      `1 / (1 - alpha)` batches.

  Returns:
    `(new_cov, new_cov_norm)`; after the first batch `new_cov` is that
    batch's covariance exactly.
  """
  d = cov.shape[-1]
  batch_cov = jnp.swapaxes(xc, -1, -2) @ xc / max(xc.shape[-2], 1)
  flat, norm = fade_mean(cov.reshape(cov.shape[:-2] + (d * d,)), cov_norm,
                         batch_cov.reshape(cov.shape[:-2] + (d * d,)), alpha)
  return flat.reshape(cov.shape), norm


@float32_matmuls
def subspace_iteration(cov: Array, basis: Array, iterations: int = 1
                       ) -> Tuple[Array, Array]:
  """Orthogonal iteration on `cov`, then Rayleigh-Ritz ordering.

  `C <- qr(cov C)` `iterations` times converges to the top-Q eigen-subspace
  at the rate `lambda_{Q+1} / lambda_Q` per iteration; the Rayleigh-Ritz step
  (eigendecomposition of the `Q x Q` matrix `C^T cov C`) then rotates the
  columns within the span to the Ritz vectors, in decreasing order of Ritz
  value, which are the eigenvectors themselves once the span is exact. Each
  column's sign is chosen to agree with the incoming basis (a positive
  `c_old^T c_new`), so coefficients do not flip between steps.

  Args:
    cov: `(..., D, D)` symmetric positive semi-definite.
    basis: `(..., D, Q)` current basis (the starting point).
    iterations: orthogonal iterations (static, >= 1).

  Returns:
    `(basis (..., D, Q) orthonormal, ritz_values (..., Q) decreasing)`.
  """
  cov = cov.astype(jnp.float32)
  c = basis.astype(jnp.float32)
  c = jax.lax.fori_loop(0, iterations,
                        lambda _, c: jnp.linalg.qr(cov @ c)[0], c)
  small = jnp.swapaxes(c, -1, -2) @ cov @ c
  small = 0.5 * (small + jnp.swapaxes(small, -1, -2))
  ritz, rot = jnp.linalg.eigh(small)
  ritz, rot = ritz[..., ::-1], rot[..., :, ::-1]
  c = c @ rot
  agree = jnp.sum(c * basis.astype(jnp.float32), axis=-2)     # (..., Q)
  c = c * jnp.where(agree < 0, -1.0, 1.0)[..., None, :]
  return c.astype(basis.dtype), ritz
