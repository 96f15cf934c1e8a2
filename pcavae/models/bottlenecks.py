"""Latent bottlenecks and the name -> class registry.

Every bottleneck is a Flax module called as `bottleneck(h, train, lr=...)` on
an NHWC encoder output and returns `(h_hat, aux)`: `h_hat` has the shape of
`h` and `aux` is a dict of named arrays (`loss`, the bottleneck's own loss
term, always present; `coefficients` or `codes`; statistics). Training may
mutate only non-`params` collections; `train=False` mutates nothing.

`lr` is the optimizer's current learning rate. The PCA bottleneck uses it as
its Hebbian step size when `learning_rate` is None (the reference ties the two);
other bottlenecks ignore it.
"""

from typing import Any, Callable, Dict, Optional, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcavae.models import pca

Array = jax.Array
Aux = Dict[str, Array]

_REGISTRY: Dict[str, Type[nn.Module]] = {}

PCA_MODES = ('spatial', 'shared', 'global')


def register(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
  def wrap(cls):
    _REGISTRY[name] = cls
    return cls
  return wrap


def get(kind: str) -> Type[nn.Module]:
  """Returns the bottleneck class registered as `kind`."""
  if kind not in _REGISTRY:
    raise ValueError(
        f'config.model.bottleneck.kind={kind!r} is not a known bottleneck; '
        f'choose one of {sorted(_REGISTRY)}.')
  return _REGISTRY[kind]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


@register('identity')
class IdentityBottleneck(nn.Module):
  """The plain autoencoder: `h_hat = h`."""

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del train, lr
    return h, {'loss': jnp.zeros((), jnp.float32)}


@register('pca')
class PCABottleneck(nn.Module):
  """Online PCA layer (PCA-VAE, arXiv 2602.18904; DESIGN.md §3).

  The basis `C` and mean `mu` live in the non-trainable `pca` collection and
  are updated outside the gradient by Sanger's rule on stop-gradient inputs;
  the encoder is trained through the projection `h_hat = C C^T (h - mu) + mu`.

  Attributes:
    num_components: Q, the number of principal components kept.
    mode: `spatial` (one PCA per latent location over D-vectors; basis
      `(L, D, Q)`), `shared` (one PCA over every location's D-vector; `(D, Q)`)
      or `global` (the whole latent as one vector; `(N, Q)`).
    alpha: fade factor of the running mean (bias-corrected EMA).
    learning_rate: Hebbian step size; None ties it to the optimizer's current
      learning rate passed as `lr` (the reference's choice).
    max_update_norm: Frobenius clip of each problem's step (reference: 0.1 in
      `spatial` mode, none in `global`). None disables it.
    orthonormalize_every: re-orthonormalise every this many updates (default
      Q, as in the reference).
    global_dim: in `global` mode, map the flattened latent to this many
      dimensions with a small MLP before the PCA and back after it (the
      reference's `embedding_dim` with `keep_shape=False`); None runs the PCA
      on the flattened latent itself.
    variance_alpha: fade factor of the running coefficient variances.
  """
  num_components: int
  mode: str = 'spatial'
  alpha: float = 0.9
  learning_rate: Optional[float] = None
  max_update_norm: Optional[float] = 0.1
  orthonormalize_every: Optional[int] = None
  global_dim: Optional[int] = None
  variance_alpha: float = 0.99

  def _samples(self, h: Array) -> Array:
    """NHWC latent -> `(problems..., n, dim)` samples for the PCA."""
    b, hh, ww, d = h.shape
    if self.mode == 'spatial':
      return jnp.transpose(h.reshape(b, hh * ww, d), (1, 0, 2))  # (L, B, D)
    if self.mode == 'shared':
      return h.reshape(b * hh * ww, d)                           # (BL, D)
    raise AssertionError(self.mode)

  def _unsamples(self, x: Array, shape: Tuple[int, ...]) -> Array:
    b, hh, ww, _ = shape
    if self.mode == 'spatial':
      return jnp.transpose(x, (1, 0, 2)).reshape(b, hh, ww, x.shape[-1])
    return x.reshape(b, hh, ww, x.shape[-1])

  @nn.compact
  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    if self.mode not in PCA_MODES:
      raise ValueError(f'config.model.bottleneck.mode={self.mode!r}; '
                       f'choose one of {PCA_MODES}.')
    in_dtype = h.dtype
    h = h.astype(jnp.float32)
    b, hh, ww, d = h.shape
    q = self.num_components

    if self.mode == 'global':
      flat = h.reshape(b, hh * ww * d)
      if self.global_dim is not None:
        # The reference's mapper and its inverse (Linear-GELU-Linear).
        hid_in = max(64, min(4 * self.global_dim, 1024))
        hid_out = max(64, min(4 * flat.shape[-1], 1024))
        flat = nn.Dense(self.global_dim, name='map_out')(
            nn.gelu(nn.Dense(hid_in, name='map_in')(flat), approximate=False))
      x = flat                                                   # (B, N)
      problem_shape: Tuple[int, ...] = ()
    else:
      x = self._samples(h)
      problem_shape = x.shape[:-2]
    dim = x.shape[-1]
    if q > dim:
      raise ValueError(
          f'config.model.bottleneck.num_components={q} exceeds the dimension '
          f'{dim} that the {self.mode!r} PCA sees.')

    def init_basis():
      key = self.make_rng('params')
      base = pca.random_orthonormal(key, (dim, q))
      return jnp.broadcast_to(base, problem_shape + (dim, q))

    basis = self.variable('pca', 'basis', init_basis)
    mean = self.variable('pca', 'mean',
                         lambda: jnp.zeros(problem_shape + (dim,), jnp.float32))
    fade_norm = self.variable('pca', 'fade_norm',
                              lambda: jnp.zeros(problem_shape, jnp.float32))
    var = self.variable('pca', 'coef_var',
                        lambda: jnp.zeros(problem_shape + (q,), jnp.float32))
    var_norm = self.variable('pca', 'coef_var_norm',
                             lambda: jnp.zeros(problem_shape, jnp.float32))
    count = self.variable('pca', 'count', lambda: jnp.zeros((), jnp.int32))

    stats: Aux = {}
    if train and not self.is_initializing():
      xs = jax.lax.stop_gradient(x)
      batch_mean = jnp.mean(xs, axis=-2)
      mu, s = pca.fade_mean(mean.value, fade_norm.value, batch_mean, self.alpha)
      xc = xs - mu[..., None, :]
      raw_delta = pca.sanger_delta(basis.value, xc)
      delta = pca.clip_update(raw_delta, self.max_update_norm)
      eta = self.learning_rate if self.learning_rate is not None else lr
      if eta is None:
        raise ValueError(
            'PCABottleneck with learning_rate=None needs the optimizer lr '
            'passed as `lr` in training.')
      new_basis = basis.value + jnp.asarray(eta, jnp.float32) * delta
      new_count = count.value + 1
      every = self.orthonormalize_every or q
      new_basis = jax.lax.cond(new_count % every == 0, pca.orthonormalize,
                               lambda c: c, new_basis)
      basis.value, mean.value, fade_norm.value = new_basis, mu, s
      count.value = new_count
      # Running variance of each coefficient (coefficients are centred).
      y_batch = xc @ new_basis
      batch_var = jnp.mean(jnp.square(y_batch), axis=-2)
      var.value, var_norm.value = pca.fade_mean(
          var.value, var_norm.value, batch_var, self.variance_alpha)
      raw_norm = jnp.sqrt(jnp.sum(jnp.square(raw_delta), axis=(-2, -1)))
      # RMS over problems of the Sanger step before the clip, and the share of
      # problems (locations) whose step the clip shortened.
      stats['pca_update_norm'] = jnp.sqrt(jnp.mean(jnp.square(raw_norm)))
      stats['pca_clipped_fraction'] = (
          jnp.mean((raw_norm > self.max_update_norm).astype(jnp.float32))
          if self.max_update_norm is not None else jnp.zeros(()))

    c = jax.lax.stop_gradient(basis.value)
    mu = jax.lax.stop_gradient(mean.value)
    coeffs, x_hat = pca.project(x, c, mu)

    if self.mode == 'global':
      if self.global_dim is not None:
        x_hat = nn.Dense(hh * ww * d, name='unmap_out')(
            nn.gelu(nn.Dense(hid_out, name='unmap_in')(x_hat),
                    approximate=False))
      h_hat = x_hat.reshape(b, hh, ww, d)
      coefficients = coeffs                                       # (B, Q)
    else:
      h_hat = self._unsamples(x_hat, h.shape)
      coefficients = self._unsamples(coeffs, h.shape[:-1] + (q,))  # (B,H,W,Q)

    aux = {'loss': jnp.zeros((), jnp.float32), 'coefficients': coefficients,
           **stats}
    return h_hat.astype(in_dtype), aux
