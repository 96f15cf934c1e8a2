"""Dimensional-collapse analysis: spectra, effective dimensions, k-means.

Pure array math (docs/design.md §2): no Flax, no I/O, no config.

Spectra (numpy, float64, host side; they run once per eval on a few
thousand vectors):

  singular_values(z)            singular values of the centred `(n, d)` samples
  effective_rank(s)             exp(entropy of s / sum s) (Roy & Vetterli 2007)
  participation_ratio(s)        (sum s^2)^2 / sum s^4
  explained_variance_dim(s, t)  smallest k whose top-k share of sum s^2 >= t;
                                at t = 0.99 this is the "dimension" of the
                                warm-up paper (arXiv 2605.06870)

Rate-distortion of a Gaussian source (reverse water-filling):

  reverse_waterfilling(variances, R) -> (theta, rates)
  waterfilling_dim(variances, R)  number of components with a positive rate:
                                  the paper's prediction of the dimension a
                                  K = 2^R codebook can spend bits on

PCA fidelity (numpy, float64): is a learned basis a PCA of its samples?
Every function takes `(..., n, D)` samples and a `(..., D, Q)` basis with
the same leading "problem" axes (one per latent location in `spatial` mode)
and returns one value per problem:

  captured_variance(x, C)       variance of x inside span(C) / sum of the
                                top-Q eigenvalues of x's covariance (1: the
                                top-Q eigen-subspace; Ky Fan: never above 1)
  spearman_rho(a, b)            Spearman's rank correlation (ties averaged)
  order_spearman(variances)     rho of component index vs coefficient
                                variance (-1: variance-ordered)
  eigenvector_alignment(x, C)   mean |cos(c_j, e_j)| over the components j
                                whose eigenvalue is separated from its
                                neighbours by a relative gap > min_gap
                                (default max(0.1, 4 / sqrt(n)))
  pca_fidelity(x, C, variances) all of them, summarised over problems

Generation (numpy, float64):

  variance_share(samples, references)
                                per component, the variance of generated
                                images' coefficients over that of the
                                references' (1: the samples reproduce it)

k-means in JAX (jittable; used to initialise codebooks at the end of AE
warm-up):

  kmeans(key, x, k, num_iters) -> (centres, assignments)
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ---------------------------------------------------------------------------
# Spectra.
# ---------------------------------------------------------------------------


def singular_values(z) -> np.ndarray:
  """Singular values of the column-centred samples, in decreasing order.

  Args:
    z: `(n, d)` samples (rows), numpy or jax.

  Returns:
    `(min(n, d),)` float64 singular values of `z - mean(z, 0)`.
  """
  z = np.asarray(z, np.float64)
  if z.ndim != 2:
    raise ValueError(f'singular_values expects (n, d) samples, got {z.shape}.')
  zc = z - z.mean(axis=0, keepdims=True)
  n, d = zc.shape
  if n > 4 * d:
    # Tall data (thousands of latent vectors of a few hundred dims): the
    # eigenvalues of the d x d Gram matrix cost a fraction of an SVD, and in
    # float64 they resolve singular values down to ~1e-8 of the largest,
    # far below anything the dimension measures can see.
    lam = np.linalg.eigvalsh(zc.T @ zc)[::-1]
    return np.sqrt(np.maximum(lam, 0.0))
  return np.linalg.svd(zc, compute_uv=False)


def _as_spectrum(s) -> np.ndarray:
  s = np.abs(np.asarray(s, np.float64).reshape(-1))
  return s


def effective_rank(s) -> float:
  """`exp(H(p))`, `p = s / sum(s)` (Roy & Vetterli's effective rank).

  Equals k for k equal non-zero values; 0 for an all-zero spectrum.
  """
  s = _as_spectrum(s)
  total = s.sum()
  if total <= 0:
    return 0.0
  p = s[s > 0] / total
  return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(s) -> float:
  """`(sum s^2)^2 / sum s^4`: k for k equal values, 1 for a rank-1 spectrum."""
  v = np.square(_as_spectrum(s))
  denom = np.sum(np.square(v))
  if denom <= 0:
    return 0.0
  return float(np.sum(v) ** 2 / denom)


def explained_variance_dim(s, threshold: float = 0.99) -> int:
  """Smallest k whose top-k components explain `threshold` of `sum s^2`.

  Args:
    s: singular values (any order; sorted inside).
    threshold: share of the variance in (0, 1].

  Returns:
    k in `1..len(s)` (0 for an all-zero spectrum).
  """
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f'threshold={threshold!r} must be in (0, 1].')
  v = np.sort(np.square(_as_spectrum(s)))[::-1]
  total = v.sum()
  if total <= 0:
    return 0
  share = np.cumsum(v) / total
  # The tolerance keeps float rounding of an exact share (e.g. 0.99 of a
  # spectrum built to have it) from adding a component.
  return int(np.argmax(share >= threshold - 1e-12) + 1)


def spectrum_summary(s, threshold: float = 0.99) -> dict:
  """`{'erank', 'pr', 'dim99'}` of a spectrum (the names logged at eval)."""
  return {'erank': effective_rank(s), 'pr': participation_ratio(s),
          'dim99': explained_variance_dim(s, threshold)}


# ---------------------------------------------------------------------------
# Reverse water-filling.
# ---------------------------------------------------------------------------


def reverse_waterfilling(variances, rate_bits: float
                         ) -> Tuple[float, np.ndarray]:
  """Rate allocation of independent Gaussian components at a total rate.

  Solves `sum_i max(0, 0.5 log2(lambda_i / theta)) = R` for the water level
  `theta` (Cover & Thomas, Thm. 10.3.3); component i gets
  `R_i = max(0, 0.5 log2(lambda_i / theta))` bits and distortion
  `min(theta, lambda_i)`. With k components active the level is
  `log2 theta = (sum_{i<=k} log2 lambda_i - 2R) / k`; the k that makes this
  consistent (`lambda_k > theta >= lambda_{k+1}`) is unique, so it is found
  exactly, without a numerical root search.

  Args:
    variances: `(d,)` component variances (eigenvalues), any order, >= 0.
    rate_bits: total rate R in bits (>= 0); `log2 K` for a K-code codebook.

  Returns:
    `(theta, rates)`: the water level and `(d,)` float64 bits per component,
    in the order of `variances`; `rates.sum() == R` (for R > 0 and some
    positive variance). At R = 0, theta is the largest variance and every
    rate is 0.
  """
  lam = np.asarray(variances, np.float64).reshape(-1)
  if np.any(lam < 0) or not np.all(np.isfinite(lam)):
    raise ValueError('variances must be finite and >= 0.')
  if rate_bits < 0:
    raise ValueError(f'rate_bits={rate_bits!r} must be >= 0.')
  rates = np.zeros_like(lam)
  positive = np.sort(lam[lam > 0])[::-1]
  if positive.size == 0:
    return 0.0, rates
  if rate_bits == 0:
    return float(positive[0]), rates
  logs = np.log2(positive)
  cum = np.cumsum(logs)
  log_theta = None
  for k in range(1, positive.size + 1):
    t = (cum[k - 1] - 2.0 * rate_bits) / k
    below_next = k == positive.size or t >= logs[k]
    if t < logs[k - 1] and below_next:
      log_theta = t
      break
  assert log_theta is not None  # f(theta) is continuous and decreasing
  theta = float(2.0 ** log_theta)
  active = lam > theta
  rates[active] = 0.5 * (np.log2(lam[active]) - log_theta)
  return theta, rates


def waterfilling_dim(variances, rate_bits: float) -> int:
  """Number of components that reverse water-filling gives a positive rate.

  The warm-up paper's prediction of the dimension of a codebook of
  `K = 2^rate_bits` codes on Gaussian latents with these variances.
  """
  _, rates = reverse_waterfilling(variances, rate_bits)
  return int(np.sum(rates > 0))


# ---------------------------------------------------------------------------
# PCA fidelity.
# ---------------------------------------------------------------------------


def _sample_eigh(x) -> Tuple[np.ndarray, np.ndarray]:
  """Eigenvalues (decreasing) and eigenvectors of the covariance of `x`
  (`(..., n, D)`, centred on its own mean, divided by n), float64."""
  x = np.asarray(x, np.float64)
  xc = x - x.mean(axis=-2, keepdims=True)
  cov = np.swapaxes(xc, -1, -2) @ xc / x.shape[-2]
  lam, vec = np.linalg.eigh(cov)
  return lam[..., ::-1], vec[..., :, ::-1]


def _orthonormal_span(basis) -> np.ndarray:
  """An orthonormal basis of span(C) (float64 QR): a tracker's basis is
  orthonormal only to O(rate) between re-orthonormalisations."""
  q, _ = np.linalg.qr(np.asarray(basis, np.float64))
  return q


def _check_problems(x, basis) -> None:
  x, basis = np.shape(x), np.shape(basis)
  if x[:-2] != basis[:-2] or x[-1] != basis[-2]:
    raise ValueError(f'samples {x} and basis {basis} do not match: expected '
                     '(..., n, D) and (..., D, Q).')


def captured_variance(x, basis) -> np.ndarray:
  """Share of the top-Q eigen-variance that span(C) captures, per problem.

  `tr(P S) / sum_{i<=Q} lambda_i(S)` with S the covariance of `x` (centred on
  its own mean) and P the orthogonal projector onto span(C). By Ky Fan's
  maximum principle it is at most 1, with equality exactly when span(C) is
  a top-Q eigen-subspace of S.

  Args:
    x: `(..., n, D)` samples.
    basis: `(..., D, Q)`.

  Returns:
    `(...)` float64 values in [0, 1] (1 for a problem without variance).
  """
  _check_problems(x, basis)
  lam, _ = _sample_eigh(x)
  return _captured(x, _orthonormal_span(basis), lam)


def _captured(x, span, lam) -> np.ndarray:
  x = np.asarray(x, np.float64)
  xc = x - x.mean(axis=-2, keepdims=True)
  inside = np.sum(np.square(xc @ span), axis=(-2, -1)) / x.shape[-2]
  best = np.sum(np.maximum(lam[..., :span.shape[-1]], 0.0), axis=-1)
  return np.where(best > 0, inside / np.where(best > 0, best, 1.0), 1.0)


def _ranks(a: np.ndarray) -> np.ndarray:
  """Ranks (1-based) along the last axis, ties given their mean rank."""
  order = np.argsort(a, axis=-1, kind='stable')
  sorted_a = np.take_along_axis(a, order, axis=-1)
  ranks = np.empty(a.shape, np.float64)
  flat_sorted = sorted_a.reshape(-1, a.shape[-1])
  flat_order = order.reshape(-1, a.shape[-1])
  flat_ranks = ranks.reshape(-1, a.shape[-1])
  for row, (vals, idx) in enumerate(zip(flat_sorted, flat_order)):
    start = np.r_[0, np.flatnonzero(np.diff(vals)) + 1]
    stop = np.r_[start[1:], len(vals)]
    mean_rank = (start + stop + 1) / 2.0          # mean of start+1..stop
    flat_ranks[row, idx] = np.repeat(mean_rank, stop - start)
  return flat_ranks.reshape(a.shape)


def spearman_rho(a, b) -> np.ndarray:
  """Spearman's rank correlation along the last axis (`scipy.stats.spearmanr`
  for each row: Pearson's r of the tie-averaged ranks). NaN where either
  side is constant."""
  ra = _ranks(np.asarray(a, np.float64))
  rb = _ranks(np.broadcast_to(np.asarray(b, np.float64), np.shape(a)))
  ra = ra - ra.mean(axis=-1, keepdims=True)
  rb = rb - rb.mean(axis=-1, keepdims=True)
  denom = np.sqrt(np.sum(ra * ra, -1) * np.sum(rb * rb, -1))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, np.sum(ra * rb, -1) / denom, np.nan)


def order_spearman(variances) -> np.ndarray:
  """Spearman rho of component index vs variance, per problem (last axis).

  -1 when the components are in decreasing order of variance, +1 in
  increasing order, about 0 for a random order; NaN where all variances are
  equal (nothing to order, e.g. before the first update).
  """
  v = np.asarray(variances, np.float64)
  return spearman_rho(v, np.arange(v.shape[-1], dtype=np.float64))


def identifiable_components(lam, num_components: int,
                            min_gap: float = 0.1) -> np.ndarray:
  """Which of the top-Q eigenvectors are defined well enough to compare.

  Eigenvector j (eigenvalues decreasing) is identifiable when its relative
  gap to both neighbours, `min(lambda_{j-1} - lambda_j, lambda_j -
  lambda_{j+1}) / lambda_j`, exceeds `min_gap` (the first one has only a
  lower neighbour): within a near-degenerate group any rotation is equally a
  PCA, and sampling noise rotates an eigenvector by about
  `sqrt(lambda_j lambda_k / n) / |lambda_j - lambda_k|`.

  Args:
    lam: `(..., D)` eigenvalues, decreasing.
    num_components: Q.
    min_gap: relative gap threshold.

  Returns:
    `(..., Q)` bool.
  """
  lam = np.asarray(lam, np.float64)
  q = num_components
  top = lam[..., :q]
  above = np.concatenate([np.full(lam.shape[:-1] + (1,), np.inf),
                          lam[..., :q - 1]], axis=-1) - top
  below_vals = lam[..., 1:q + 1]
  if below_vals.shape[-1] < q:  # Q == D: the last one has no lower neighbour
    below_vals = np.concatenate(
        [below_vals, np.full(lam.shape[:-1] + (1,), -np.inf)], axis=-1)
  below = top - below_vals
  gap = np.minimum(above, below)
  with np.errstate(invalid='ignore', divide='ignore'):
    return (top > 0) & (gap > min_gap * top)


def default_min_gap(num_samples: int) -> float:
  """`max(0.1, 4 / sqrt(n))`: the relative eigengap above which n samples
  pin an eigenvector down to about 1 / 4 radian (sampling noise rotates it
  by about `1 / (sqrt(n) gap)`), so that the alignment measures the basis,
  not the estimate it is compared with."""
  return max(0.1, 4.0 / np.sqrt(max(num_samples, 1)))


def eigenvector_alignment(x, basis, min_gap: Optional[float] = None
                          ) -> Tuple[np.ndarray, np.ndarray]:
  """Mean `|cos(c_j, e_j)|` over the identifiable components, per problem.

  `c_j` is column j of the basis (normalised), `e_j` eigenvector j of the
  covariance of `x`; only components that `identifiable_components` keeps
  (at `min_gap`, default `default_min_gap(n)`) count. 1 for exact
  eigenvectors in the right order; a random basis in D dimensions gives
  about `sqrt(2 / (pi D))`.

  Returns:
    `(alignment, count)`: `(...)` float64 (NaN where no component is
    identifiable) and `(...)` the number of identifiable components.
  """
  _check_problems(x, basis)
  lam, vec = _sample_eigh(x)
  if min_gap is None:
    min_gap = default_min_gap(np.shape(x)[-2])
  return _alignment(basis, lam, vec, min_gap)


def _alignment(basis, lam, vec, min_gap):
  c = np.asarray(basis, np.float64)
  q = c.shape[-1]
  c = c / np.maximum(np.linalg.norm(c, axis=-2, keepdims=True), 1e-300)
  cos = np.abs(np.sum(c * vec[..., :, :q], axis=-2))              # (..., Q)
  keep = identifiable_components(lam, q, min_gap)
  count = keep.sum(-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean = np.where(count > 0, np.sum(cos * keep, -1) / count, np.nan)
  return mean, count


def pca_fidelity(x, basis, variances, min_gap: Optional[float] = None
                 ) -> dict:
  """The PCA fidelity summary logged at every eval (`pca/...`).

  Args:
    x: `(..., n, D)` samples the PCA sees (its input, not centred).
    basis: `(..., D, Q)`.
    variances: `(..., Q)` running coefficient variances (the layer's own
      view of its ordering).
    min_gap: see `identifiable_components`; None: `default_min_gap(n)`.

  Returns:
    `{'captured_variance', 'captured_variance_min', 'order_spearman',
    'eigenvector_alignment', 'identifiable_components'}`: means over
    problems (the min for `_min`; problems where a value is NaN are left
    out of its mean, and a value is NaN only if it is NaN for all).
  """
  _check_problems(x, basis)
  lam, vec = _sample_eigh(x)
  if min_gap is None:
    min_gap = default_min_gap(np.shape(x)[-2])
  captured = _captured(x, _orthonormal_span(basis), lam)
  rho = order_spearman(variances)
  align, count = _alignment(basis, lam, vec, min_gap)

  def nanmean(v):
    v = np.asarray(v, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float('nan')

  return {'captured_variance': float(np.mean(captured)),
          'captured_variance_min': float(np.min(captured)),
          'order_spearman': nanmean(rho),
          'eigenvector_alignment': nanmean(align),
          'identifiable_components': float(np.mean(count))}


# ---------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------


def variance_share(sample_coefficients, reference_coefficients
                   ) -> np.ndarray:
  """The share of each component's variance that generated images reproduce.

  Args:
    sample_coefficients: `(B, ..., Q)` latent coefficients of generated
      images (e.g. `(B, h, w, Q)` spatial PCA, `(B, Q)` global).
    reference_coefficients: `(B', ..., Q)` coefficients of real images.

  Returns:
    `(Q,)` float64: `var(samples) / var(references)` per component, each
    variance over all images and locations together (population variance);
    NaN where the references' variance is 0.

  Raises:
    ValueError: the last axes differ, or a set has fewer than 2 vectors.
  """
  a = np.asarray(sample_coefficients, np.float64)
  b = np.asarray(reference_coefficients, np.float64)
  if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
    raise ValueError(f'Need (B, ..., Q) coefficients with the same Q, got '
                     f'{a.shape} and {b.shape}.')
  a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f'Need at least 2 coefficient vectors per set, got '
                     f'{len(a)} and {len(b)}.')
  var_a, var_b = a.var(axis=0), b.var(axis=0)
  out = np.full(var_a.shape, np.nan)
  np.divide(var_a, var_b, out=out, where=var_b > 0)
  return out


# ---------------------------------------------------------------------------
# k-means (JAX).
# ---------------------------------------------------------------------------


def squared_distances(x: Array, centres: Array) -> Array:
  """`(n, k)` squared Euclidean distances, float32, clamped at 0."""
  x = jnp.asarray(x, jnp.float32)
  centres = jnp.asarray(centres, jnp.float32)
  # HIGHEST: TF32/bf16 matmuls on accelerators can flip near-ties.
  cross = jnp.matmul(x, centres.T, precision=jax.lax.Precision.HIGHEST)
  d2 = (jnp.sum(jnp.square(x), -1, keepdims=True) - 2.0 * cross
        + jnp.sum(jnp.square(centres), -1)[None, :])
  return jnp.maximum(d2, 0.0)


def kmeans_plusplus(key: Array, x: Array, k: int,
                    num_candidates: Optional[int] = None) -> Array:
  """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's).

  The first centre is a uniformly drawn sample. Each next one: draw
  `num_candidates` samples with probability proportional to their squared
  distance to the nearest centre so far, and keep the candidate that lowers
  the total squared distance most. Plain k-means++ (one candidate) misses a
  cluster near another one often enough to matter (about one seeding in six
  on an 8-cluster test mixture); the greedy draw makes that rare. If every
  sample already coincides with a centre (fewer distinct points than k),
  the draw is uniform.

  Args:
    key: PRNG key.
    x: `(n, d)` samples.
    k: number of centres (static).
    num_candidates: candidates per draw; None: `2 + floor(ln k)` (as
      scikit-learn).

  Returns:
    `(k, d)` float32 centres, each one of the samples.
  """
  x = jnp.asarray(x, jnp.float32)
  n, d = x.shape
  m = num_candidates or 2 + int(np.log(k))
  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  c0 = x[first]
  centres = jnp.zeros((k, d), jnp.float32).at[0].set(c0)
  d2 = jnp.sum(jnp.square(x - c0), -1)

  def body(i, carry):
    centres, d2 = carry
    logits = jnp.where(jnp.sum(d2) > 0, jnp.log(d2), jnp.zeros_like(d2))
    idx = jax.random.categorical(jax.random.fold_in(key, i), logits,
                                 shape=(m,))
    cand_d2 = jnp.minimum(d2[None, :],
                          squared_distances(x[idx], x))       # (m, n)
    best = jnp.argmin(jnp.sum(cand_d2, axis=-1))
    return centres.at[i].set(x[idx[best]]), cand_d2[best]

  centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
  return centres


def assign(x: Array, centres: Array) -> Array:
  """Index of the nearest centre for each row of `x`, `(n,)` int32."""
  return jnp.argmin(squared_distances(x, centres), axis=-1).astype(jnp.int32)


def lloyd_step(x: Array, centres: Array) -> Array:
  """One Lloyd iteration: assign, then move each centre to its points' mean.

  A centre that gets no points stays where it is.
  """
  k = centres.shape[0]
  a = assign(x, centres)
  x = jnp.asarray(x, jnp.float32)
  sums = jax.ops.segment_sum(x, a, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones(a.shape, jnp.float32), a,
                               num_segments=k)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where((counts > 0)[:, None], means, centres.astype(jnp.float32))


@functools.partial(jax.jit,
                   static_argnames=('k', 'num_iters', 'num_candidates'))
def kmeans(key: Array, x: Array, k: int, num_iters: int,
           num_candidates: Optional[int] = None) -> Tuple[Array, Array]:
  """Greedy k-means++ seeding, then `num_iters` Lloyd iterations (jitted).

  A fixed iteration count (no tolerance) keeps the result a deterministic
  function of `(key, x)` with one compiled shape, which is what a resumable
  codebook initialisation needs.

  Args:
    key: PRNG key of the seeding.
    x: `(n, d)` samples.
    k: number of centres (static).
    num_iters: Lloyd iterations (static, >= 0).
    num_candidates: see `kmeans_plusplus`.

  Returns:
    `(centres (k, d) float32, assignments (n,) int32)`: the assignments are
    to the returned centres. Once the iteration has converged (assignments
    stable) every centre with points is exactly the mean of its points.
  """
  centres = kmeans_plusplus(key, x, k, num_candidates)
  centres = jax.lax.fori_loop(0, num_iters, lambda _, c: lloyd_step(x, c),
                              centres)
  return centres, assign(x, centres)
