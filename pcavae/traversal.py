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
"""

from typing import Any, Dict, Sequence, Tuple

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
