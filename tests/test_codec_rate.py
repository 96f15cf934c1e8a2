"""The codec's rate against figures computed here, outside the codec.

`tests/test_codec.py` checks that files round-trip and that the coder is
near the information content under the codec's own model; a worse model
that still round-trips would pass it. These tests derive the model from
scratch (code counts by `np.bincount` over the training images' codes, the
Gaussian cell masses from scipy, the bit allocation by a greedy loop) and
pin the files' payload sizes to it.
"""

import heapq
import os
import subprocess
import sys

from flax import traverse_util
import numpy as np
import pytest
from scipy import integrate
from scipy import optimize
from scipy import stats

from conftest import ROOT
from pcavae import codec as codec_lib
from pcavae import data
from pcavae import train
from pcavae.data import image_folder
from pcavae.data import photo_patches

COUNT_IMAGES = 20  # not a multiple of the batch (8): the last batch is padded
BUDGET = 96  # bits per 16 x 16 tile (4 x 4 locations x 4 components)
# The range coder's overhead: its final flush (at most two 32-bit words) and
# its 24-bit probabilities' rounding, well under 0.5 %.
FLUSH_BITS, MODEL_SLACK = 64, 1.005


@pytest.fixture(scope='module')
def photo():
  """A 96 x 128 corner of a held-out photograph: whole 16-px tiles, so the
  tiles are a reshape."""
  return image_folder.read_rgb(photo_patches.photo_path('coffee'))[
      40:136, 160:288]


def _unit(images):
  """uint8 -> the model's float input in [-1, 1]."""
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


def _tiles(image, size=16):
  """Row-major tiles of an image whose sides are multiples of `size`."""
  h, w, _ = image.shape
  return (image.reshape(h // size, size, w // size, size, 3)
          .transpose(0, 2, 1, 3, 4).reshape(-1, size, size, 3))


def _payload_bits(data_bytes):
  return 8 * (len(data_bytes) - codec_lib.HEADER_BYTES)


def _assert_payload_is_the_information(payload, info):
  assert info - 8 <= payload <= info * MODEL_SLACK + FLUSH_BITS, (payload,
                                                                  info)


# ---------------------------------------------------------------------------
# Codes (FSQ): counts and a Krichevsky-Trofimov categorical.
# ---------------------------------------------------------------------------


def test_code_counts_and_file_size_from_the_training_codes(
    tmp_path_factory, codec_fsq_workdir, photo):
  """`compress` as a user types it; the counts file is the bincount of the
  first COUNT_IMAGES training images' codes, and the file's payload is the
  symbols' information under the add-1/2 smoothed counts."""
  workdir = codec_fsq_workdir
  src = tmp_path_factory.mktemp('in')
  packed = tmp_path_factory.mktemp('packed')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(photo).save(src / 'photo.png')
  done = subprocess.run(
      [sys.executable, '-m', 'pcavae.codec', 'compress',
       f'--workdir={workdir}', f'--input={src}', f'--output={packed}',
       '--batch_size=8', f'--count_images={COUNT_IMAGES}'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert done.returncode == 0, done.stderr

  config, model, variables, step = train.restore_model(workdir)
  source = data.get_split(config.dataset, config.resolution, 'train')
  images = np.stack([source[i] for i in range(COUNT_IMAGES)])
  _, aux = model.apply(variables, _unit(images), train=False)
  num_codes = int(np.prod(config.model.bottleneck.levels))
  counts = np.bincount(np.asarray(aux['codes']).reshape(-1),
                       minlength=num_codes)
  assert counts.sum() == COUNT_IMAGES * 4 * 4  # 4 x 4 locations per image
  with np.load(os.path.join(workdir, 'codec',
                            f'code_counts_step{step}.npz')) as cached:
    np.testing.assert_array_equal(cached['counts'], counts)
    assert int(cached['count_images']) == COUNT_IMAGES

  # Krichevsky-Trofimov: (n_k + 1/2) / (N + K/2).
  p = (counts + 0.5) / (counts.sum() + num_codes / 2)
  _, aux = model.apply(variables, _unit(_tiles(photo)), train=False)
  codes = np.asarray(aux['codes']).reshape(-1)
  assert codes.size == 6 * 8 * 16  # 48 tiles of 4 x 4 codes
  info = -np.sum(np.log2(p[codes]))
  payload = _payload_bits((packed / 'photo.png.pcav').read_bytes())
  _assert_payload_is_the_information(payload, info)
  # Two figures that frame it: a uniform model's log2 K per code, which a
  # trained model beats by far, and the plug-in entropy of the image's own
  # codes, which no fixed model beats.
  assert info < 0.9 * codes.size * np.log2(num_codes)
  freq = np.bincount(codes) / codes.size
  assert info > -codes.size * np.sum(freq[freq > 0] * np.log2(freq[freq > 0]))


# ---------------------------------------------------------------------------
# PCA: water-filled bits, a quantized Gaussian per coefficient.
# ---------------------------------------------------------------------------


def _uniform_quantizer_mse(step, levels):
  """MSE of a `levels`-level midrise uniform quantizer on N(0, 1), by
  quadrature over each cell."""
  total = 0.0
  for k in range(levels):
    lo = -np.inf if k == 0 else (k - levels / 2) * step
    hi = np.inf if k == levels - 1 else (k - levels / 2 + 1) * step
    centre = (k - levels / 2 + 0.5) * step
    total += integrate.quad(
        lambda t, c=centre: (t - c) ** 2 * stats.norm.pdf(t), lo, hi)[0]
  return total


def _optimal_step(num_bits):
  """The MSE-optimal step of a 2^b-level uniform quantizer on N(0, 1)."""
  return optimize.minimize_scalar(
      _uniform_quantizer_mse, bounds=(1e-3, 3.0), args=(2 ** num_bits,),
      method='bounded', options={'xatol': 1e-9}).x


def test_optimal_steps_are_max_1960():
  """Max (1960), Table I: the uniform quantizer's optimal steps for 2, 4,
  8, 16 levels on a unit Gaussian."""
  np.testing.assert_allclose([_optimal_step(b) for b in (1, 2, 3, 4)],
                             [1.5958, 0.9957, 0.5860, 0.3352], atol=2e-4)


def _greedy_bits(variances, budget, max_bits=16):
  """Each bit to the coefficient whose distortion sigma^2 4^-b it lowers
  most: reverse water-filling in integers."""
  v = np.asarray(variances, np.float64).reshape(-1)
  bits_ = np.zeros(v.size, int)
  heap = [(-x, i) for i, x in enumerate(v)]
  heapq.heapify(heap)
  for _ in range(budget):
    gain, i = heapq.heappop(heap)
    bits_[i] += 1
    if bits_[i] < max_bits:
      heapq.heappush(heap, (gain / 4, i))
  return bits_.reshape(np.shape(variances))


def _waterfilling_rates(variances, total_bits):
  """Real-valued reverse water-filling: bits per coefficient
  R_i = max(0, 1/2 log2(sigma_i^2 / theta)) with theta such that sum R_i = B."""
  v = np.asarray(variances, np.float64).reshape(-1)
  rate = lambda log_theta: np.maximum(0.0, 0.5 * (np.log2(v) - log_theta))
  log_theta = optimize.brentq(lambda t: rate(t).sum() - total_bits,
                              np.log2(v.max()) - 2 * total_bits - 1,
                              np.log2(v.max()))
  return rate(log_theta).reshape(np.shape(variances))


def test_budget_file_size_follows_from_waterfilling(tmp_path_factory,
                                                   codec_pca_workdir, photo):
  workdir = codec_pca_workdir
  config, model, variables, _ = train.restore_model(workdir)
  assert config.model.bottleneck.mode == 'spatial'
  flat = traverse_util.flatten_dict(variables['pca'])
  (variances,) = [v for k, v in flat.items() if k[-1] == 'coef_var']
  variances = np.asarray(variances, np.float64)  # (locations, components)
  assert variances.shape == (16, 4)

  nbits = _greedy_bits(variances, BUDGET)
  assert nbits.sum() == BUDGET
  # Within a bit of the real-valued water-filling rate.
  rates = _waterfilling_rates(variances, BUDGET)
  assert np.all(np.abs(nbits - rates) < 1 + 1e-9)
  sent = nbits > 0

  _, aux = model.apply(variables, _unit(_tiles(photo)), train=False)
  y = np.asarray(aux['coefficients'], np.float64)  # (tiles, 4, 4, 4)
  y = y.reshape(y.shape[0], 16, 4)
  sigma = np.sqrt(variances)
  info = 0.0
  for b in np.unique(nbits[sent]):
    levels = 2 ** int(b)
    step = _optimal_step(int(b))
    mask = nbits == b
    symbols = np.clip(np.floor(y[:, mask] / (step * sigma[mask]))
                      + levels // 2, 0, levels - 1).astype(int)
    edges = (np.arange(levels + 1) - levels / 2) * step
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.diff(stats.norm.cdf(edges))
    info -= np.sum(np.log2(p[symbols]))

  out = codec_lib.Codec(workdir, budget=BUDGET, batch_size=8).compress(photo)
  _assert_payload_is_the_information(_payload_bits(out.data), info)
  # The Gaussian model saves on the nominal B bits a tile.
  assert info < 48 * BUDGET
