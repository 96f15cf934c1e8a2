"""The reformulations made for speed compute the same function as the plain
formulas they replace (values and gradients, to float32 tolerance)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcavae.models import autoencoder, pca

_DN = ('NHWC', 'HWIO', 'NHWC')
_HI = jax.lax.Precision.HIGHEST


def _rand(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _assert_same_conv(fast, plain, x, w, g, rel=None):
  """`fast(x, w)` equals `plain(x, w)` in value and in both gradients (of
  `sum(out * g)`): to `rel` times each array's largest magnitude (Winograd's
  float32 rounding), or else to 1e-5 (values) and 1e-4 (gradients)."""
  want = plain(x, w)
  tol = 1e-5 if rel is None else rel * float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(fast(x, w), want, atol=tol)
  for f_grad, p_grad in zip(
      jax.grad(lambda x, w: jnp.sum(fast(x, w) * g), argnums=(0, 1))(x, w),
      jax.grad(lambda x, w: jnp.sum(plain(x, w) * g), argnums=(0, 1))(x, w)):
    tol = 1e-4 if rel is None else rel * float(jnp.max(jnp.abs(p_grad)))
    np.testing.assert_allclose(f_grad, p_grad, atol=tol)


@pytest.mark.parametrize('h,cin,cout,winograd', [
    (4, 3, 5, False), (8, 6, 3, False), (5, 2, 4, False),
    (4, 128, 32, True), (5, 130, 33, True)])
def test_subpixel_conv_transpose_matches_dilated_conv(h, cin, cout, winograd):
  rng = np.random.default_rng(0)
  x, w = _rand(rng, 2, h, h + 1, cin), _rand(rng, 4, 4, cin, cout)
  g = _rand(rng, 2, 2 * h, 2 * h + 2, cout)

  def plain(x, w):
    return jax.lax.conv_transpose(x, w, (2, 2), [(2, 2), (2, 2)],
                                  dimension_numbers=_DN, precision=_HI)

  def fast(x, w):
    return autoencoder._conv_t_subpixel(x, w, winograd=winograd,
                                        precision=_HI)

  _assert_same_conv(fast, plain, x, w, g, rel=2e-6 if winograd else None)


@pytest.mark.parametrize('h,cin,cout,winograd', [
    (8, 3, 5, False), (6, 4, 2, False), (8, 32, 128, True),
    (6, 33, 129, True)])
def test_space_to_depth_conv_matches_strided_conv(h, cin, cout, winograd):
  rng = np.random.default_rng(7)
  x, w = _rand(rng, 2, h, h + 2, cin), _rand(rng, 4, 4, cin, cout)
  g = _rand(rng, 2, h // 2, h // 2 + 1, cout)

  def plain(x, w):
    return jax.lax.conv_general_dilated(x, w, (2, 2), [(1, 1), (1, 1)],
                                        dimension_numbers=_DN, precision=_HI)

  def fast(x, w):
    return autoencoder.conv_general(x, w, (2, 2), ((1, 1), (1, 1)),
                                    dimension_numbers=_DN, precision=_HI,
                                    winograd=winograd)

  _assert_same_conv(fast, plain, x, w, g, rel=2e-6 if winograd else None)


def test_space_to_depth_conv_passes_other_convs_through():
  rng = np.random.default_rng(8)
  x, w = _rand(rng, 1, 7, 7, 3), _rand(rng, 3, 3, 3, 4)
  got = autoencoder.conv_general(x, w, (2, 2), ((1, 1), (1, 1)),
                                 dimension_numbers=_DN)
  want = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=_DN)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('b,h,w,cin,cout', [
    (2, 8, 8, 5, 3), (1, 4, 6, 3, 7), (3, 2, 10, 4, 4), (2, 6, 4, 128, 136)])
def test_winograd_conv_matches_direct_conv(b, h, w, cin, cout):
  """F(2x2, 3x3): values and both gradients of the direct 3x3 conv."""
  rng = np.random.default_rng(10)
  x, k = _rand(rng, b, h, w, cin), _rand(rng, 3, 3, cin, cout)
  g = _rand(rng, b, h, w, cout)

  def plain(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=_DN, precision=_HI)

  def fast(x, k):
    return autoencoder._conv3x3_winograd(x, k, precision=_HI)

  _assert_same_conv(fast, plain, x, k, g, rel=2e-6)


@pytest.mark.parametrize('h,w,cin,cout', [(9, 9, 128, 130), (6, 11, 136, 128),
                                           (2, 3, 128, 128)])
def test_winograd_2x2_conv_matches_direct_conv(h, w, cin, cout):
  """F(2x2, 2x2) on even and odd output sizes (odd: padded and cropped)."""
  rng = np.random.default_rng(14)
  x, k = _rand(rng, 2, h, w, cin), _rand(rng, 2, 2, cin, cout)
  g = _rand(rng, 2, h - 1, w - 1, cout)

  def plain(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                        dimension_numbers=_DN, precision=_HI)

  def fast(x, k):
    return autoencoder._conv2x2_valid(x, k, winograd=True, precision=_HI)

  assert autoencoder._winograd_pays(k)  # the Winograd path is taken
  _assert_same_conv(fast, plain, x, k, g, rel=2e-6)


def test_winograd_rounding_is_that_of_the_direct_conv():
  """At the model's shape (16x16, 256 channels), float32 Winograd's error
  against a float64 conv is within 2x the direct float32 conv's, for the
  3x3 F(2x2, 3x3) and the 2x2 F(2x2, 2x2) (here with an odd output)."""
  rng = np.random.default_rng(11)
  x = rng.normal(size=(2, 16, 16, 256))
  k = rng.normal(size=(3, 3, 256, 256)) / 48.0
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  exact = sum(np.einsum('bhwc,co->bhwo', xp[:, a:a + 16, c:c + 16], k[a, c])
              for a in range(3) for c in range(3))
  x32, k32 = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
  direct = jax.lax.conv_general_dilated(x32, k32, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=_DN, precision=_HI)
  wino = autoencoder._conv3x3_winograd(x32, k32, precision=_HI)
  _assert_error_within_twice_direct(wino, direct, exact)

  # F(2x2, 2x2): the decoder's sub-pixel conv (17x17 outputs, odd).
  k2 = rng.normal(size=(2, 2, 256, 256)) / 32.0
  exact = sum(np.einsum('bhwc,co->bhwo', x[:, a:a + 15, c:c + 15], k2[a, c])
              for a in range(2) for c in range(2))
  k2 = jnp.asarray(k2, jnp.float32)
  direct = jax.lax.conv_general_dilated(x32, k2, (1, 1), 'VALID',
                                        dimension_numbers=_DN, precision=_HI)
  wino = autoencoder._conv2x2_valid(x32, k2, winograd=True, precision=_HI)
  _assert_error_within_twice_direct(wino, direct, exact)


def _assert_error_within_twice_direct(wino, direct, exact):
  err_direct = np.max(np.abs(np.asarray(direct, np.float64) - exact))
  err_wino = np.max(np.abs(np.asarray(wino, np.float64) - exact))
  assert err_wino <= 2.0 * err_direct, (err_wino, err_direct)


def test_conv_general_takes_winograd_only_where_asked_and_valid():
  rng = np.random.default_rng(12)
  for shape, cout, stride, expect_winograd in [
      ((1, 8, 8, 128), 128, (1, 1), True),
      ((1, 7, 8, 128), 128, (1, 1), False),    # odd height
      ((1, 8, 8, 128), 128, (2, 2), False),    # strided
      ((1, 8, 8, 128), 64, (1, 1), False),     # too few channels to pay
      ((1, 8, 8, 3), 4, (1, 1), False)]:
    x = _rand(rng, *shape)
    k = _rand(rng, 3, 3, shape[-1], cout)
    want = jax.lax.conv_general_dilated(x, k, stride, ((1, 1), (1, 1)),
                                        dimension_numbers=_DN)
    off = autoencoder.conv_general(x, k, stride, ((1, 1), (1, 1)),
                                   dimension_numbers=_DN)
    on = autoencoder.conv_general(x, k, stride, ((1, 1), (1, 1)),
                                  dimension_numbers=_DN, winograd=True)
    np.testing.assert_array_equal(off, want)
    if expect_winograd:
      np.testing.assert_array_equal(
          on, autoencoder._conv3x3_winograd(x, k))
      np.testing.assert_allclose(on, want,
                                 atol=2e-6 * float(jnp.max(jnp.abs(want))))
    else:
      np.testing.assert_array_equal(on, want)


def test_winograd_autoencoder_has_the_same_parameters_and_outputs():
  x = _rand(np.random.default_rng(13), 2, 16, 16, 3)
  kw = dict(channels=(32, 128), latent_dim=16, num_res_layers=1,
            bottleneck_kind='identity')  # Winograd in the 128-channel convs
  direct = autoencoder.Autoencoder(**kw)
  wino = autoencoder.Autoencoder(winograd=True, **kw)
  v = direct.init(jax.random.PRNGKey(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, v,
               wino.init(jax.random.PRNGKey(0), x, train=False))
  got = wino.apply(v, x, train=False)[0]
  want = direct.apply(v, x, train=False)[0]
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not np.array_equal(got, want)  # another summation order was used


def test_encoder_is_the_plain_flax_encoder():
  """Same parameter tree and outputs as with plain strided nn.Conv."""

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      for c in (8, 16):
        x = nn.leaky_relu(nn.Conv(c, (4, 4), strides=2, padding=1)(x))
      return x

  class Fast(nn.Module):
    @nn.compact
    def __call__(self, x):
      for c in (8, 16):
        x = nn.leaky_relu(nn.Conv(
            c, (4, 4), strides=2, padding=1,
            conv_general_dilated=autoencoder.conv_general)(x))
      return x

  x = _rand(np.random.default_rng(9), 2, 16, 16, 3)
  v_plain = Plain().init(jax.random.PRNGKey(0), x)
  v_fast = Fast().init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, v_plain, v_fast)
  np.testing.assert_allclose(Fast().apply(v_plain, x),
                             Plain().apply(v_plain, x), atol=1e-5)


def test_subpixel_module_is_flax_conv_transpose():
  """Same parameter tree, same initial values, same outputs."""
  rng = np.random.default_rng(1)
  x = _rand(rng, 2, 6, 6, 8)
  ours = autoencoder.SubpixelConvTranspose(5)
  flax_ct = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=2)
  v_ours = ours.init(jax.random.PRNGKey(3), x)
  v_flax = flax_ct.init(jax.random.PRNGKey(3), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_flax)
  np.testing.assert_allclose(ours.apply(v_flax, x), flax_ct.apply(v_flax, x),
                             atol=1e-5)


@pytest.mark.parametrize('channels', [(16, 32), (8, 16, 32)])
def test_decoder_parameter_names_are_stable(channels):
  z = jnp.zeros((1, 4, 4, 32))
  params = autoencoder.Decoder(channels, num_res_layers=1).init(
      jax.random.PRNGKey(0), z)['params']
  n_up = len(channels)
  expected = {f'ConvTranspose_{i}' for i in range(n_up - 1)} | {'conv_out'}
  assert expected <= set(params)
  assert params['conv_out']['kernel'].shape == (4, 4, channels[0], 3)


def _sanger_loop(c, xc):
  """Sanger's rule sample by sample, component by component."""
  n = xc.shape[0]
  out = np.zeros_like(c)
  for x in xc:
    y = c.T @ x
    resid = x.copy()
    for j in range(c.shape[1]):
      resid = resid - c[:, j] * y[j]
      out[:, j] += y[j] * resid
  return out / n


@pytest.mark.parametrize('n,d,q', [(4, 80, 128), (16, 96, 192), (3, 64, 128)])
def test_blocked_sanger_matches_loop(n, d, q):
  assert pca._sanger_block(n, q) is not None  # the blocked path is taken
  rng = np.random.default_rng(2)
  c = rng.normal(size=(2, d, q)) / np.sqrt(d)
  xc = rng.normal(size=(2, n, d))
  got = np.asarray(pca.sanger_delta(jnp.asarray(c, jnp.float32),
                                    jnp.asarray(xc, jnp.float32)))
  for i in range(2):
    np.testing.assert_allclose(got[i], _sanger_loop(c[i], xc[i]),
                               rtol=1e-4, atol=2e-5)


def test_blocked_sanger_matches_direct_formula():
  rng = np.random.default_rng(3)
  c = _rand(rng, 5, 64, 256) / 8.0
  xc = _rand(rng, 5, 16, 64)
  block = pca._sanger_block(16, 256)
  assert block is not None
  y = xc @ c
  direct = (jnp.swapaxes(xc, -1, -2) @ y
            - c @ jnp.triu(jnp.swapaxes(y, -1, -2) @ y)) / 16
  np.testing.assert_allclose(pca._sanger_delta_blocked(c, xc, block), direct,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('noise', [1e-3, 3e-2, 1.0])
def test_newton_schulz_orthonormalize_matches_eigh(noise):
  rng = np.random.default_rng(4)
  base = pca.random_orthonormal(jax.random.PRNGKey(0), (3, 48, 32))
  c = base + noise * _rand(rng, 3, 48, 32)
  got = pca.orthonormalize(c)
  ref = pca._orthonormalize_eigh(c, 1e-8)
  np.testing.assert_allclose(got, ref, atol=2e-5)
  assert float(pca.orthonormality_error(got)) < 1e-5


def test_orthonormalize_rank_deficient_falls_back_to_eigh():
  rng = np.random.default_rng(5)
  c = np.asarray(rng.normal(size=(10, 4)), np.float32)
  c[:, 3] = 0.0                       # rank 3: the eigenvalue clamp matters
  got = pca.orthonormalize(jnp.asarray(c))
  ref = pca._orthonormalize_eigh(jnp.asarray(c), 1e-8)
  np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize('h_shape,b_shape', [
    ((4, 5, 6), (4, 6, 3)), ((7, 6), (6, 6)), ((2, 3, 5, 6), (6, 4)),
    ((2, 3, 5, 6), (3, 6, 4))])
def test_project_custom_vjp_matches_autodiff(h_shape, b_shape):
  rng = np.random.default_rng(6)
  h, basis = _rand(rng, *h_shape), _rand(rng, *b_shape)
  mean = _rand(rng, *b_shape[:-1])

  def plain(h, b, m):
    y = (h - m[..., None, :]) @ b
    return y, y @ jnp.swapaxes(b, -1, -2) + m[..., None, :]

  def loss(f):
    return lambda *a: sum(jnp.sum(o * w) for o, w in zip(f(*a), (1.3, -0.7)))

  for got, want in zip(pca.project(h, basis, mean), plain(h, basis, mean)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  grads = jax.grad(loss(pca.project), argnums=(0, 1, 2))(h, basis, mean)
  wants = jax.grad(loss(plain), argnums=(0, 1, 2))(h, basis, mean)
  for got, want in zip(grads, wants):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_default_xla_flags_respects_the_user(monkeypatch):
  from pcavae import sharding  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sharding, '_backend_started', lambda: False)
  monkeypatch.setattr(sharding, '_CPU_XLA_FLAGS',
                      (('xla_cpu_made_up', 'x', (0, 0), (99, 0)),))
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert sharding.default_xla_flags(env) == (
      '--xla_force_host_platform_device_count=8 --xla_cpu_made_up=x')
  assert env['XLA_FLAGS'].endswith('--xla_cpu_made_up=x')
  env = {'XLA_FLAGS': '--xla_cpu_made_up=y'}          # the user's value wins
  assert sharding.default_xla_flags(env) == '--xla_cpu_made_up=y'
  env = {'PCAVAE_XLA_DEFAULTS': '0'}
  assert sharding.default_xla_flags(env) == '' and 'XLA_FLAGS' not in env
  monkeypatch.setattr(sharding, '_CPU_XLA_FLAGS',
                      (('xla_cpu_made_up', 'x', (0, 0), (0, 1)),))
  assert sharding.default_xla_flags({}) == ''         # other jaxlib versions


def test_tune_host_allocator_opt_outs(monkeypatch):
  from pcavae import sharding  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('PCAVAE_MALLOC_TUNING', '0')
  assert not sharding.tune_host_allocator()
  monkeypatch.delenv('PCAVAE_MALLOC_TUNING')
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')
  assert not sharding.tune_host_allocator()


def test_host_allocator_tuning_is_for_cpu_runs(monkeypatch, tmp_path):
  """With a JAX accelerator plugin installed the tuning is skipped (one
  arena would serialise the runtime's host threads), unless JAX_PLATFORMS
  pins the run to the CPU or PCAVAE_MALLOC_TUNING=1 forces it."""
  from pcavae import sharding  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.delenv('PCAVAE_MALLOC_TUNING', raising=False)
  for var in ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
              'GLIBC_TUNABLES'):
    monkeypatch.delenv(var, raising=False)
  assert not sharding.accelerator_expected()        # this CPU-only venv
  info = tmp_path / 'jax_cuda13_plugin-0.11.2.dist-info'
  info.mkdir()
  (info / 'METADATA').write_text(
      'Metadata-Version: 2.1\nName: jax-cuda13-plugin\nVersion: 0.11.2\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  assert sharding.accelerator_expected()
  assert not sharding.tune_host_allocator()
  monkeypatch.setenv('PCAVAE_MALLOC_TUNING', '1')
  assert sharding.tune_host_allocator()
  monkeypatch.delenv('PCAVAE_MALLOC_TUNING')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not sharding.accelerator_expected()
  assert sharding.tune_host_allocator()


@pytest.mark.parametrize('fixed', [False, True])
@pytest.mark.parametrize('top', [1.05, 2.9, 12.0])
def test_orthonormalize_after_a_large_step_is_the_polar_factor(fixed, top):
  """Issue 19: Newton-Schulz starts at lambda_max <= 1.8 (not 1) and ends
  with one update past an error bound of 1e-3 without forming its Gram
  matrix. A basis whose Gram spectrum spans [0.9, top] (a rate-0.1 `sanger`
  step gives about [0.9, 3]; 12 at the first step from a random basis)
  still comes out as the polar factor, adaptive and fixed count alike, and
  orthonormal to float32 rounding."""
  rng = np.random.default_rng(7)
  u, _ = np.linalg.qr(rng.normal(size=(4, 40, 24)))
  v, _ = np.linalg.qr(rng.normal(size=(4, 24, 24)))
  sigma = np.sqrt(np.linspace(0.9, top, 24))
  c = jnp.asarray((u * sigma[None, None, :]) @ np.swapaxes(v, -1, -2),
                  jnp.float32)
  got = pca.orthonormalize(c, fixed_iterations=fixed)
  polar = u @ np.swapaxes(v, -1, -2)
  np.testing.assert_allclose(got, polar, atol=2e-5)
  assert float(pca.orthonormality_error(got)) < 2e-6


def test_orthonormalize_fixed_count_rank_deficient_falls_back_to_eigh():
  rng = np.random.default_rng(5)
  c = np.asarray(rng.normal(size=(10, 4)), np.float32)
  c[:, 3] = 0.0
  got = pca.orthonormalize(jnp.asarray(c), fixed_iterations=True)
  ref = pca._orthonormalize_eigh(jnp.asarray(c), 1e-8)
  np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize('top', [1.05, 2.9, 12.0])
def test_orthonormalize_qr_is_the_q_factor(top):
  """Issue 19: the `sanger` default re-orthonormalises by Cholesky-QR. After
  a step that spread the Gram spectrum over [0.9, top] the result is
  numpy's (float64) Q factor with a positive diagonal of R, orthonormal to
  float32 rounding, with column 1 along the input's column 1 (Gram-Schmidt
  order)."""
  rng = np.random.default_rng(8)
  u, _ = np.linalg.qr(rng.normal(size=(4, 40, 24)))
  v, _ = np.linalg.qr(rng.normal(size=(4, 24, 24)))
  sigma = np.sqrt(np.linspace(0.9, top, 24))
  c = (u * sigma[None, None, :]) @ np.swapaxes(v, -1, -2)
  got = np.asarray(pca.orthonormalize_qr(jnp.asarray(c, jnp.float32)))
  q, r = np.linalg.qr(c)
  want = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert float(pca.orthonormality_error(jnp.asarray(got))) < 2e-6
  first = c[..., 0] / np.linalg.norm(c[..., 0], axis=-1, keepdims=True)
  np.testing.assert_allclose(got[..., 0], first, atol=1e-6)
  # The polar factor is another orthonormal basis of the same span.
  polar = np.asarray(pca.orthonormalize(jnp.asarray(c, jnp.float32)))
  assert np.abs(got - polar).max() > 1e-2
  np.testing.assert_allclose(got @ np.swapaxes(got, -1, -2),
                             polar @ np.swapaxes(polar, -1, -2), atol=2e-5)


@pytest.mark.parametrize('fixed', [False, True])
def test_orthonormalize_qr_keeps_an_orthonormal_basis_and_falls_back(fixed):
  """An orthonormal basis is a fixed point (R = I). A rank-deficient one
  (Cholesky fails, or R's diagonal spans more than 1e3) gets the symmetric
  `orthonormalize`'s result (eigenvalues clamped), not NaN."""
  base = pca.random_orthonormal(jax.random.PRNGKey(2), (3, 16, 6))
  np.testing.assert_allclose(
      pca.orthonormalize_qr(base, fixed_iterations=fixed), base, atol=2e-6)
  rng = np.random.default_rng(5)
  c = np.asarray(rng.normal(size=(10, 4)), np.float32)
  for col in (c[:, 0], 0.0):          # a repeated column, a zero column
    bad = c.copy()
    bad[:, 3] = col
    got = pca.orthonormalize_qr(jnp.asarray(bad), fixed_iterations=fixed)
    want = pca.orthonormalize(jnp.asarray(bad), fixed_iterations=fixed)
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('n', [1, 5, 16, 17, 51, 64])
def test_cholesky_inverse_matches_numpy(n):
  """The blocked Cholesky factor and its inverse (matrix products only; no
  LAPACK kernel, which deadlocked with several devices) against numpy."""
  rng = np.random.default_rng(n)
  m = rng.normal(size=(3, n + 8, n))
  a = np.swapaxes(m, -1, -2) @ m + 0.1 * np.eye(n)
  low, inv = pca.cholesky_inverse(jnp.asarray(a, jnp.float32))
  want = np.linalg.cholesky(a)
  np.testing.assert_allclose(low, want, atol=2e-5 * np.abs(want).max())
  np.testing.assert_allclose(np.asarray(inv, np.float64) @ want,
                             np.broadcast_to(np.eye(n), a.shape), atol=1e-4)
  assert np.all(np.triu(np.asarray(low), 1) == 0)
  assert np.all(np.triu(np.asarray(inv), 1) == 0)
  bad = a.copy()
  bad[:, -1, -1] = -1.0                    # not positive definite: NaN
  assert not np.all(np.isfinite(np.asarray(
      pca.cholesky_inverse(jnp.asarray(bad, jnp.float32))[1])))
