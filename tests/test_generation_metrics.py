"""Generation metrics: improved precision/recall against a brute-force
reference and closed forms; gFID with rFID's Inception and cached real
statistics; the share of each latent component's variance samples keep."""

import copy
import os

import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from conftest import tiny_config
from pcavae import analysis
from pcavae import data
from pcavae import evaluators
from pcavae import metrics
from pcavae import train
from pcavae import train_state
from pcavae.metrics import fid as fid_lib

# ---------------------------------------------------------------------------
# Precision and recall.


def _reference_precision_recall(real, fake, k):
  """Kynkaanniemi et al. 2019 written out with exact pairwise distances."""

  def radii(x):
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]

  d = cdist(fake, real)
  precision = np.mean(np.any(d <= radii(real)[None, :], axis=1))
  recall = np.mean(np.any(d.T <= radii(fake)[None, :], axis=1))
  return precision, recall


def _two_sets(seed=0):
  rng = np.random.default_rng(seed)
  real = rng.normal(size=(120, 16))
  fake = rng.normal(size=(90, 16)) * 1.3 + 0.4
  return real, fake


@pytest.mark.parametrize('k', [1, 3, 5])
def test_precision_recall_matches_brute_force(k):
  real, fake = _two_sets()
  got = metrics.precision_recall(real, fake, k=k, batch_size=32)
  want = _reference_precision_recall(real, fake, k)
  assert 0 < got[0] < 1 and 0 < got[1] < 1, got
  assert got == pytest.approx(want, abs=1e-12)


def test_block_size_does_not_change_results():
  real, fake = _two_sets(1)
  results = {metrics.precision_recall(real, fake, batch_size=b)
             for b in (1, 7, 90, 1000)}
  assert len(results) == 1, results


def test_far_from_the_origin():
  # Norms 1e3 times the neighbour distances: the expansion |a|^2 + |b|^2 -
  # 2 a.b cancels to a few units of float32 here; float64 keeps the result.
  real, fake = _two_sets(2)
  offset = np.float32(1e3) * np.ones(16, np.float32)
  far = metrics.precision_recall((real + offset).astype(np.float32),
                                 (fake + offset).astype(np.float32))
  near = metrics.precision_recall(real.astype(np.float32),
                                  fake.astype(np.float32))
  assert far == near


def test_closed_forms():
  real, fake = _two_sets(3)
  assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
  assert metrics.precision_recall(real, real + 1e3) == (0.0, 0.0)
  # A subset of the real points lies in the real manifold; it covers only
  # part of the real set.
  precision, recall = metrics.precision_recall(real, real[:40])
  assert precision == 1.0 and recall < 1.0


def test_one_dimensional_example_by_hand():
  # k = 1. Real 0, 2, 3, 7: radii 2, 1, 1, 4, balls [-2, 2], [1, 3],
  # [2, 4], [3, 11]. Fake -2, -3, 11, 12, 1.5, 0.5: radii 1 each.
  # Inside the real balls: -2 and 11 (on the boundary), 1.5, 0.5 -> 4 / 6.
  # Real points inside the fake balls: 0 (0.5 +- 1), 2 (1.5 +- 1) -> 2 / 4.
  real = np.array([[0.], [2.], [3.], [7.]])
  fake = np.array([[-2.], [-3.], [11.], [12.], [1.5], [0.5]])
  assert metrics.precision_recall(real, fake, k=1) == (4 / 6, 0.5)
  assert _reference_precision_recall(real, fake, 1) == (4 / 6, 0.5)


def test_precision_recall_errors():
  real, fake = _two_sets()
  with pytest.raises(ValueError, match='k = 90 needs'):
    metrics.precision_recall(real, fake, k=90)
  with pytest.raises(ValueError, match='k = 0 needs'):
    metrics.precision_recall(real, fake, k=0)
  with pytest.raises(ValueError, match='Feature dimensions differ'):
    metrics.precision_recall(real, fake[:, :8])
  with pytest.raises(ValueError, match=r'fake_features must be \(N >= 2'):
    metrics.precision_recall(real, fake[:1])
  with pytest.raises(ValueError, match=r'real_features must be \(N >= 2'):
    metrics.precision_recall(real[:, 0], fake)
  with pytest.raises(ValueError, match='non-finite'):
    metrics.precision_recall(real, np.full_like(fake, np.nan))


# ---------------------------------------------------------------------------
# Variance share of latent components.


def test_variance_share_closed_forms():
  rng = np.random.default_rng(0)
  references = rng.normal(size=(6, 3, 2, 4))
  scale = np.array([0.5, 1.0, 2.0, 3.0])
  np.testing.assert_allclose(
      analysis.variance_share(references * scale + 7.0, references),
      scale ** 2, rtol=1e-12)
  # Global (B, Q) coefficients; a component without reference variance.
  flat = references.reshape(-1, 4)
  flat_ref = flat.copy()
  flat_ref[:, 2] = 1.0
  share = analysis.variance_share(2 * flat, flat_ref)
  np.testing.assert_allclose(share[[0, 1, 3]], 4.0, rtol=1e-12)
  assert np.isnan(share[2])
  # Pooled over images and locations: samples that differ only between
  # locations (0 left, 2 right: variance 1) match references that differ
  # only between images (1, 3: variance 1).
  samples = np.tile(np.array([0., 2.])[None, None, :, None], (3, 1, 1, 1))
  refs = np.array([1., 3.])[:, None, None, None]
  np.testing.assert_array_equal(analysis.variance_share(samples, refs), [1.])
  with pytest.raises(ValueError, match='same Q'):
    analysis.variance_share(references, references[..., :3])
  with pytest.raises(ValueError, match='at least 2'):
    analysis.variance_share(np.ones((1, 4)), flat)


@pytest.fixture(scope='module')
def pca_run(codec_pca_workdir):
  """`(config, model, variables, references)`: the session's tiny PCA run
  and its first 10 held-out images."""
  config, model, variables, _ = train.restore_model(codec_pca_workdir)
  source = data.get_split(config.dataset, config.resolution, 'eval')
  references = data.to_float(np.stack([source[i] for i in range(10)]))
  return config, model, variables, references


def test_coefficient_variance_share_of_a_pca_run(pca_run):
  _, model, variables, references = pca_run
  same = evaluators.coefficient_variance_share(
      model, variables, references, references, batch_size=4)
  assert same.shape == (4,)
  np.testing.assert_array_equal(same, 1.0)
  # Mirrored images against the originals, against numpy on the
  # coefficients of one direct `model.apply` (batches of 4 pad the last).
  flipped = references[:, :, ::-1].copy()
  share = evaluators.coefficient_variance_share(
      model, variables, flipped, references, batch_size=4)

  def coefficients(x):
    _, aux = model.apply(variables, x, train=False)
    c = np.asarray(aux['coefficients'], np.float64)
    assert c.shape == (10, 4, 4, 4)  # (B, h, w, Q) at 16 px
    return c.reshape(-1, 4)

  want = coefficients(flipped).var(0) / coefficients(references).var(0)
  assert np.all(np.abs(want - 1) > 1e-3)  # the flip changes each share
  np.testing.assert_allclose(share, want, rtol=1e-4)


def test_coefficient_variance_share_none_without_coefficients():
  # FSQ has no `coefficients`: answered from shapes alone, nothing runs.
  config = tiny_config('fsq')
  model = train.create_model(config)
  tx, _ = train.make_optimizer(config)
  state = jax.eval_shape(train.make_init_fn(model, tx, config),
                         jax.random.PRNGKey(0))
  images = np.zeros((3, 16, 16, 3), np.float32)
  assert evaluators.coefficient_variance_share(
      model, train_state.variables_of(state), images, images) is None


# ---------------------------------------------------------------------------
# gFID, precision and recall with the FID Inception.

NUM = 6  # held-out images: in batches of 4, one full and one padded


def test_sample_metrics_errors(tmp_path, monkeypatch):
  config = tiny_config()
  monkeypatch.setenv('PCAVAE_CACHE', str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError,
                     match='python -m pcavae.metrics.convert_inception'):
    evaluators.SampleMetrics(config, str(tmp_path))


def test_gfid_precision_recall_of_held_out_images(inception_weights,
                                                  tmp_path):
  del inception_weights
  config = tiny_config(**{'eval.batch_size': 4})
  workdir = str(tmp_path / 'run')
  source = data.get_split(config.dataset, config.resolution, 'eval')
  held_out = data.to_float(np.stack([source[i] for i in range(NUM)]))
  sample_metrics = evaluators.SampleMetrics(config, workdir)

  # The held-out images against themselves.
  out = sample_metrics(held_out, source)
  assert set(out) == {f'gen/gfid_{NUM}', 'gen/precision', 'gen/recall',
                      'gen/num_samples', 'gen/seconds'}
  assert out['gen/num_samples'] == NUM and out['gen/seconds'] > 0
  assert abs(out[f'gen/gfid_{NUM}']) < 1e-2
  assert (out['gen/precision'], out['gen/recall']) == (1.0, 1.0)

  # The real statistics are cached where rFID at the same N reads them,
  # from the features of the first N held-out images.
  features = fid_lib.extract_features(metrics.make_inception_features(),
                                      held_out, batch_size=4)
  rfid_config = copy.deepcopy(config)
  rfid_config.eval.rfid_num_images = NUM
  rfid = evaluators.Rfid(evaluators.Context(rfid_config, None, workdir, {},
                                            None))
  stats_path = evaluators.fid_stats_path(config, workdir, NUM)
  assert rfid._fid_stats_path(NUM) == stats_path  # pylint: disable=protected-access
  assert stats_path.endswith(f'fid_stats/photo_patches_r16_n{NUM}.npz')
  rfid_stats = rfid._load_real_stats(source)  # pylint: disable=protected-access
  np.testing.assert_allclose(rfid_stats.mu, features.mean(0), rtol=1e-5,
                             atol=1e-6)
  features_path = evaluators.fid_features_path(config, workdir, NUM)
  assert sorted(os.listdir(os.path.dirname(stats_path))) == [
      f'photo_patches_r16_n{NUM}.npz',
      f'photo_patches_r16_n{NUM}_features.npz']
  np.testing.assert_allclose(metrics.load_features(features_path), features,
                             rtol=1e-5, atol=1e-6)

  # Mirrored images: gFID and precision/recall as computed here, with the
  # real features read from the cache (not recomputed, not rewritten).
  before = os.stat(features_path).st_mtime_ns
  mirrored = held_out[:, :, ::-1].copy()
  out = sample_metrics(mirrored, source)
  assert os.stat(features_path).st_mtime_ns == before
  fake = fid_lib.extract_features(metrics.make_inception_features(),
                                  mirrored, batch_size=4)
  gfid = fid_lib.rfid_from_features(features, fake, method='eigh')
  assert gfid > 1
  np.testing.assert_allclose(out[f'gen/gfid_{NUM}'], gfid, rtol=1e-4)
  assert (out['gen/precision'], out['gen/recall']) == pytest.approx(
      _reference_precision_recall(features.astype(np.float64),
                                  fake.astype(np.float64), 3))

  with pytest.raises(ValueError, match=r'lower the sample count \(--num\) '
                     'to at most 4'):
    sample_metrics(held_out, [source[i] for i in range(4)])
  with pytest.raises(ValueError, match='config.resolution = 16'):
    sample_metrics(np.zeros((4, 32, 32, 3), np.float32), source)
