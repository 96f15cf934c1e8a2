"""The PCA state math runs at full float32 precision on every backend.

XLA's default matmul precision is TF32 on recent GPUs and bf16 passes on TPUs;
on CPU it is already float32, so a CPU run cannot see a missing precision by
its values. These tests read the precision off the lowered programs instead:
every dot in the functions of `pcavae.models.pca` and in the PCA layer's train
and eval steps must say `HIGHEST`, even when the caller's default is bf16 (what
a TPU gets), so a regression shows without an accelerator.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import pytest

from pcavae.models import bottlenecks
from pcavae.models import pca

DOT = re.compile(r'stablehlo\.dot\w*[^\n]*')

# Functions of pcavae.models.pca that multiply no matrices.
NO_MATMUL = {'fade_mean', 'clip_update', '_sanger_block', '_sum_to_shape',
             'float32_matmuls', 'random_orthonormal'}


def _dots(fn, *args) -> list:
  """The dot ops of `fn` lowered under a bf16 default (a TPU's)."""
  with jax.default_matmul_precision('bfloat16'):
    text = jax.jit(fn).lower(*args).as_text()
  return DOT.findall(text)


def _assert_highest(dots: list, what: str) -> None:
  assert dots, f'{what}: no dot found; the check would be empty.'
  loose = [d for d in dots if 'precision = [HIGHEST, HIGHEST]' not in d]
  assert not loose, f'{what}: {len(loose)} of {len(dots)} dots below HIGHEST: {loose[:2]}'


def _problems():
  key = jax.random.PRNGKey(0)
  basis = pca.random_orthonormal(key, (3, 8, 4))
  x = jax.random.normal(key, (3, 32, 8))
  xc = x - x.mean(axis=-2, keepdims=True)
  cov = jnp.swapaxes(xc, -1, -2) @ xc / 32
  return basis, x, xc, cov


def _cases():
  basis, x, xc, cov = _problems()
  var = jnp.ones((3, 4))
  mean = jnp.zeros((3, 8))
  gram = jnp.swapaxes(basis, -1, -2) @ basis + jnp.eye(4)
  return {
      'sanger_delta': (pca.sanger_delta, basis, xc),
      '_sanger_delta_blocked': (
          lambda b, v: pca._sanger_delta_blocked(b, v, 2), basis, xc),
      'normalized_sanger_delta': (pca.normalized_sanger_delta, basis, xc, var),
      'gha_update': (lambda b, v: pca.gha_update(b, v, 0.1), basis, xc),
      'orthonormalize': (pca.orthonormalize, 1.1 * basis),
      '_orthonormalize_eigh': (
          lambda b: pca._orthonormalize_eigh(b, 1e-8), 1.1 * basis),
      'orthonormalize_qr': (pca.orthonormalize_qr, 1.1 * basis),
      'cholesky_inverse': (pca.cholesky_inverse, gram),
      '_cholesky_inverse_columns': (pca._cholesky_inverse_columns, gram),
      'orthonormality_error': (pca.orthonormality_error, basis),
      'project': (pca.project, x, basis, mean),
      '_project_centered': (pca._project_centered, xc, basis),
      '_project_fwd': (pca._project_fwd, xc, basis),
      '_project_bwd': (
          lambda b, v: pca._project_bwd(
              pca._project_fwd(v, b)[1],
              (jnp.ones((3, 32, 4)), jnp.ones((3, 32, 8)))), basis, xc),
      'reconstruct': (pca.reconstruct, jnp.ones((3, 32, 4)), basis, mean),
      'exact_pca': (lambda v: pca.exact_pca(v, 4), x),
      'covariance_update': (
          lambda c, v: pca.covariance_update(c, jnp.zeros((3,)), v, 0.99),
          cov, xc),
      'subspace_iteration': (pca.subspace_iteration, cov, basis),
  }


def test_every_matmul_function_of_the_module_is_checked():
  defined = {name for name, obj in vars(pca).items()
             if inspect.isfunction(obj) and obj.__module__ == pca.__name__}
  defined.add('_project_centered')        # a custom_vjp, not a function
  assert defined - NO_MATMUL == set(_cases()), (
      'a function of pcavae.models.pca is neither checked here nor listed '
      'as free of matrix products')


@pytest.mark.parametrize('name', sorted(_cases()))
def test_state_math_dots_are_highest(name):
  fn, *args = _cases()[name]
  _assert_highest(_dots(fn, *args), f'pca.{name}')


def test_gradient_of_the_projection_is_highest():
  basis, x, _, _ = _problems()
  mean = jnp.zeros((3, 8))

  def loss(x, basis):
    y, rec = pca.project(x, basis, mean)
    return jnp.sum(rec ** 2) + jnp.sum(y)

  _assert_highest(_dots(jax.grad(loss, argnums=(0, 1)), x, basis),
                  'grad of pca.project')


def test_a_plain_product_is_not_highest_under_a_bf16_default():
  """The check itself can fail: an undecorated product is seen."""
  dots = _dots(lambda a, b: a @ b, jnp.ones((4, 4)), jnp.ones((4, 4)))
  assert len(dots) == 1 and 'HIGHEST' not in dots[0]


@pytest.mark.parametrize('mode,tracker,ortho', [
    ('spatial', 'sanger', 'qr'), ('shared', 'reference', 'symmetric'),
    ('global', 'subspace', 'qr'), ('spatial', 'sanger', 'symmetric')])
def test_layer_steps_are_highest_with_a_bf16_input(mode, tracker, ortho):
  """The layer's train step (update, re-orthonormalisation, drift check,
  projection, its gradient) and its eval step, on a bf16 latent."""
  layer = bottlenecks.PCABottleneck(
      num_components=4, mode=mode, tracker=tracker, orthonormalization=ortho,
      orthonormalize_every=1, orthonormality_check_every=1,
      learning_rate=0.1)
  h = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 8), jnp.bfloat16)
  variables = layer.init(jax.random.PRNGKey(1), h, train=False)

  def train(v, h):
    def loss(h):
      (h_hat, _), state = layer.apply(v, h, train=True, lr=1e-3,
                                      mutable=['pca'])
      return jnp.sum(jnp.square(h_hat.astype(jnp.float32))), state
    return jax.grad(loss, has_aux=True)(h)

  _assert_highest(_dots(train, variables, h), f'{mode} {tracker} train step')
  _assert_highest(
      _dots(lambda v, h: layer.apply(v, h, train=False)[0], variables, h),
      f'{mode} eval step')
