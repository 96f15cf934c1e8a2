"""Latent traversals: decode images with one latent direction moved.

* `pca_traversal`: a bottleneck with coefficients (PCA-VAE). Coefficient j
  of every image is moved by `t * sigma_j` (the bottleneck's
  `coefficient_scales`: for the PCA, from the running coefficient variance)
  through the bottleneck's eval-only `coefficient_shift`, then
  reconstructed (`y C^T + mu`, after coefficient
  quantization if the config has it) and decoded. In `global` mode that is
  one number per image; in `spatial` / `shared` mode component j moves at
  every location at once (each location by its own sigma).
* `latent_traversal`: the nearest analogue for any other bottleneck (VQ
  family, FSQ, LFQ, KL, identity): the encoder output at every location is
  moved along the j-th principal direction of the encoder outputs of a
  reference set (exact PCA pooled over locations) by `t * sqrt(lambda_j)`,
  then quantized by the bottleneck as in eval and decoded. For a quantizer
  the move only shows where it changes the chosen codes.

Both return `(strips, info)`: strips `(C, V, N, H, W, 3)` in [-1, 1]
(component, value, image) for `viz.traversal_figure`, and per component its
sigma and the mean absolute pixel change from `t = 0` (how much the
direction matters).

Interpolation between two images (`interpolate_pairs`, the same for every
bottleneck): the encoder outputs `z_a`, `z_b` are mixed,
`z_t = (1 - t) z_a + t z_b`, and `z_t` goes through the bottleneck as in
eval and is decoded. For the PCA the coefficients are linear in `z`, so
this is the straight line between the two images' coefficient vectors
(then water-filled and quantized if the config has a bit budget); for a
quantizer every location snaps to its nearest code along the way, which is
what "interpolating VQ tokens" means in practice. `path_smoothness` measures
a path by the perceptual distance between consecutive frames;
`interpolation_study` runs several models on the same pairs and returns a
figure and those numbers.
"""

from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcavae.models import autoencoder
from pcavae.models import pca as pca_lib

Variables = Dict[str, Any]


def _gated(m, z, z_hat, aux):
  """The AE warm-up gate, as `Autoencoder.quantize` applies it."""
  if m.warmup:
    z_hat, aux = autoencoder.warmup_gate(m.quantizer_active.value, z, z_hat,
                                         aux)
  return z_hat, aux


def _decode_shifted(m, x, shift):
  z = m.encode(x).astype(jnp.float32)
  z_hat, aux = m.bottleneck(z, False, coefficient_shift=shift)
  z_hat, _ = _gated(m, z, z_hat, aux)
  return m.decode(z_hat)


def _decode_moved(m, x, offset):
  z = m.encode(x).astype(jnp.float32) + offset
  z_hat, _ = m.quantize(z, False)
  return m.decode(z_hat)


def _encode(m, x):
  return m.encode(x)


def _info(strips: np.ndarray, values: Sequence[float], sigmas) -> Dict:
  zero = list(values).index(0) if 0 in values else None
  change = ([float(np.mean(np.abs(strips[i] - strips[i, zero][None])))
             for i in range(strips.shape[0])] if zero is not None else None)
  return {'values': [float(v) for v in values],
          'sigma': [float(s) for s in sigmas],
          'mean_abs_pixel_change': change}


def pca_traversal(model, variables: Variables, images: np.ndarray,
                  components: Sequence[int], values: Sequence[float]
                  ) -> Tuple[np.ndarray, Dict]:
  """Decodes `images` with PCA coefficient j moved by `t * sigma_j`.

  Args:
    model: a `pcavae.models.autoencoder.Autoencoder` whose bottleneck has
      coefficients (`Bottleneck.coefficient_scales`; the `pca` one).
    variables: its variables (`params`, `pca`, ...), e.g. from
      `train.restore_model`.
    images: `(N, R, R, 3)` in [-1, 1].
    components: component indices j (0 = largest variance).
    values: offsets t in units of sigma, e.g. (-2, -1, 0, 1, 2).

  Returns:
    `(strips (C, V, N, R, R, 3), info)` (module docstring); info's `sigma`
    is each component's sigma averaged over locations.
  """
  images = jnp.asarray(images, jnp.float32)
  z = jax.eval_shape(lambda x: model.apply(variables, x, method=_encode),
                     images)
  _, hh, ww, _ = z.shape
  try:
    sigma_img = np.asarray(model.apply(
        variables, method=lambda m: m.bottleneck.coefficient_scales(
            (hh, ww))), np.float64)
  except NotImplementedError as e:
    raise ValueError(f'pca_traversal needs a bottleneck with coefficients '
                     f'(pca), not {model.bottleneck_kind!r}; use '
                     'latent_traversal.') from e
  q = sigma_img.shape[-1]
  if max(components) >= q:
    raise ValueError(f'components {list(components)} exceed Q = {q}.')
  per_image = sigma_img.shape
  fn = jax.jit(lambda v, x, s: model.apply(v, x, s, method=_decode_shifted))
  strips = np.zeros((len(components), len(values)) + images.shape,
                    np.float32)
  for i, j in enumerate(components):
    for k, t in enumerate(values):
      shift = np.zeros(per_image, np.float32)
      shift[..., j] = t * sigma_img[..., j]
      strips[i, k] = np.asarray(fn(variables, images, shift[None]))
  sig = [float(np.mean(sigma_img[..., j])) for j in components]
  return strips, _info(strips, values, sig)


def latent_traversal(model, variables: Variables, images: np.ndarray,
                     reference_images: np.ndarray, components: Sequence[int],
                     values: Sequence[float]) -> Tuple[np.ndarray, Dict]:
  """Decodes `images` with the encoder output moved along its j-th
  principal direction (over `reference_images`) by `t * sqrt(lambda_j)`.

  Args:
    model: an `Autoencoder` with any bottleneck.
    variables: its variables.
    images: `(N, R, R, 3)` in [-1, 1].
    reference_images: `(M, R, R, 3)` whose encoder outputs (pooled over
      locations) define the directions.
    components: direction indices j (0 = largest variance).
    values: offsets t in units of sigma.

  Returns:
    `(strips (C, V, N, R, R, 3), info)` (module docstring).
  """
  encode = jax.jit(lambda v, x: model.apply(v, x, method=_encode))
  ref = np.asarray(encode(variables, jnp.asarray(reference_images,
                                                 jnp.float32)))
  x = jnp.asarray(ref.reshape(-1, ref.shape[-1]), jnp.float32)
  k = max(components) + 1
  if k > x.shape[-1]:
    raise ValueError(f'components {list(components)} exceed the latent '
                     f'dimension {x.shape[-1]}.')
  _, vec, lam = pca_lib.exact_pca(x, k)
  vec, lam = np.asarray(vec), np.maximum(np.asarray(lam), 0.0)
  fn = jax.jit(lambda v, x, o: model.apply(v, x, o, method=_decode_moved))
  images = jnp.asarray(images, jnp.float32)
  strips = np.zeros((len(components), len(values)) + images.shape,
                    np.float32)
  for i, j in enumerate(components):
    for kk, t in enumerate(values):
      offset = (t * np.sqrt(lam[j]) * vec[:, j]).astype(np.float32)
      strips[i, kk] = np.asarray(fn(variables, images, offset))
  return strips, _info(strips, values, np.sqrt(lam[list(components)]))


def _decode_mixed(m, a, b, ts):
  """Frames `(P, T, H, W, 3)` between image pairs `a`, `b` `(P, H, W, 3)`
  at mixing weights `ts` `(T,)`."""
  za = m.encode(a).astype(jnp.float32)
  zb = m.encode(b).astype(jnp.float32)
  t = ts.reshape((1, -1) + (1,) * (za.ndim - 1))
  z = (1.0 - t) * za[:, None] + t * zb[:, None]
  p, n = z.shape[:2]
  z_hat, _ = m.quantize(z.reshape((p * n,) + z.shape[2:]), False)
  x = m.decode(z_hat).astype(jnp.float32)
  return x.reshape((p, n) + x.shape[1:])


def interpolate_pairs(model, variables: Variables, pairs: np.ndarray,
                      num_steps: int) -> np.ndarray:
  """Decoded frames along the encoder-space line between image pairs.

  Args:
    model: an `Autoencoder` with any bottleneck.
    variables: its variables.
    pairs: `(P, 2, R, R, 3)` in [-1, 1]: the two ends of each path.
    num_steps: frames per path, ends included (>= 2).

  Returns:
    `(P, num_steps, R, R, 3)` float32 frames in [-1, 1]; frame 0 and the
    last are the two images' reconstructions.
  """
  pairs = np.asarray(pairs, np.float32)
  if pairs.ndim != 5 or pairs.shape[1] != 2:
    raise ValueError(f'pairs must be (P, 2, H, W, C), got {pairs.shape}.')
  if num_steps < 2:
    raise ValueError(f'num_steps must be >= 2, got {num_steps}.')
  ts = jnp.linspace(0.0, 1.0, num_steps, dtype=jnp.float32)
  fn = jax.jit(lambda v, a, b, t: model.apply(v, a, b, t,
                                              method=_decode_mixed))
  return np.asarray(fn(variables, jnp.asarray(pairs[:, 0]),
                       jnp.asarray(pairs[:, 1]), ts))


Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]


def path_smoothness(distance: Distance, frames: np.ndarray
                    ) -> Dict[str, float]:
  """How evenly a path of frames moves, by a perceptual `distance`.

  LPIPS is a weighted sum of squared differences of unit-normalised
  features: a squared Euclidean distance in that feature space. Its square
  root is the distance that obeys the triangle inequality, so the path's
  shape (evenness, length, detour) is measured in square-root units; the
  steps themselves are reported in the distance's own units.

  Args:
    distance: `fn(x, y) -> (B,)`, a squared distance between two batches of
      images (e.g. `lpips_distance()`).
    frames: `(P, T, H, W, 3)` paths (`interpolate_pairs`).

  Returns:
    Averages over the P paths of: `lpips_step_mean` (the distance between
    consecutive frames), `lpips_step_max` (each path's largest step);
    with `s_i = sqrt(step_i)`: `evenness` (max s_i / mean s_i: 1 for a path
    that moves at an even pace, T - 1 for one that jumps all at once),
    `path_length` (sum of s_i), `endpoint_distance` (sqrt of the distance
    from the first frame to the last), `detour` (path length / endpoint
    distance: >= 1, and 1 for a perceptually straight path); and
    `num_pairs`.
  """
  frames = np.asarray(frames, np.float32)
  p, t = frames.shape[:2]
  rest = frames.shape[2:]
  steps = np.asarray(distance(frames[:, :-1].reshape((-1,) + rest),
                              frames[:, 1:].reshape((-1,) + rest)),
                     np.float64).reshape(p, t - 1)
  root = np.sqrt(np.maximum(steps, 0.0))
  ends = np.sqrt(np.maximum(np.asarray(
      distance(frames[:, 0], frames[:, -1]), np.float64), 0.0))
  length = root.sum(axis=1)
  tiny = 1e-12
  return {'lpips_step_mean': float(steps.mean()),
          'lpips_step_max': float(steps.max(axis=1).mean()),
          'evenness': float(np.mean(root.max(axis=1)
                                    / np.maximum(root.mean(axis=1), tiny))),
          'path_length': float(length.mean()),
          'endpoint_distance': float(ends.mean()),
          'detour': float(np.mean(length / np.maximum(ends, tiny))),
          'num_pairs': int(p)}


def lpips_distance(batch_size: int = 64) -> Distance:
  """LPIPS (AlexNet, v0.1) as a `Distance`, images below 32 px upsampled as
  in the evaluators (`metrics.lpips_alex_any_size`)."""
  from pcavae import metrics  # pylint: disable=g-import-not-at-top
  params = metrics.load_lpips_params('alex')
  fn = metrics.lpips_alex_any_size

  def distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.concatenate([
        np.asarray(fn(params, jnp.asarray(x[i:i + batch_size], jnp.float32),
                      jnp.asarray(y[i:i + batch_size], jnp.float32)))
        for i in range(0, len(x), batch_size)])
  return distance


def interpolation_study(runs: Mapping[str, Tuple[Any, Variables]],
                        pairs: np.ndarray, num_steps: int,
                        distance: Distance, figure_pairs: int = 2,
                        title: str = '') -> Tuple[np.ndarray, Dict]:
  """Interpolates the same pairs through several models.

  Args:
    runs: label -> `(model, variables)`.
    pairs: `(P, 2, R, R, 3)` in [-1, 1].
    num_steps: frames per path, ends included.
    distance: as in `path_smoothness`.
    figure_pairs: how many of the pairs the figure shows.
    title: figure title.

  Returns:
    `(figure, numbers)`: a uint8 figure (per shown pair, the first image,
    then one row of frames per model, then the second image, each row
    labelled) and label -> `path_smoothness` of its paths.
  """
  from pcavae import viz  # pylint: disable=g-import-not-at-top
  pairs = np.asarray(pairs, np.float32)
  paths, numbers = {}, {}
  for label, (model, variables) in runs.items():
    paths[label] = interpolate_pairs(model, variables, pairs, num_steps)
    numbers[label] = path_smoothness(distance, paths[label])
  ordered = {f'pair {i + 1}: {label}': np.concatenate(
      [pairs[i, :1], paths[label][i], pairs[i, 1:]])
             for i in range(min(figure_pairs, len(pairs))) for label in runs}
  columns = (['image a'] + [f't={t:.2f}' for t in
                            np.linspace(0, 1, num_steps)] + ['image b'])
  figure = viz.labeled_rows(ordered, column_labels=columns, title=title)
  return figure, numbers
