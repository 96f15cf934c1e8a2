"""Tests of pcavae.data: the four datasets and the grain pipelines."""

import importlib.util
import logging
import os
from pathlib import Path
import socket
import subprocess
import sys
import textwrap
import threading

import ml_collections
import numpy as np
from PIL import Image
import pytest

from pcavae import data
from pcavae.data import fashion_mnist
from pcavae.data import photo_patches
from pcavae.data import sources

FASHION_DIR = (Path(__file__).resolve().parents[2] / 'shared' / 'data' /
               'fashion-mnist')


def _config(**kwargs) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(kwargs)


def _indexed_source(n: int, resolution: int = 4) -> sources.ArraySource:
  """Image i is filled with the value i, so batches reveal their indices."""
  images = np.broadcast_to(
      np.arange(n, dtype=np.uint8)[:, None, None, None],
      (n, resolution, resolution, 3)).copy()
  return sources.ArraySource(images)


def _indices(batch: np.ndarray) -> np.ndarray:
  """Recovers the indices of an `_indexed_source` batch."""
  values = np.rint((batch + 1.0) * 127.5).astype(np.int64)
  assert (values == values[:, :1, :1, :1]).all()
  return values[:, 0, 0, 0]


def _take(iterator, count: int) -> list[np.ndarray]:
  return [next(iterator) for _ in range(count)]


@pytest.fixture(autouse=True)
def _fresh_caches():
  data.clear_caches()
  yield
  data.clear_caches()


# --------------------------------------------------------------------------
# Registry and config validation.


def test_unknown_name_lists_datasets():
  with pytest.raises(ValueError, match=r'config\.dataset\.name') as e:
    data.get_splits(_config(name='mnist'), 32)
  for name in data.DATASETS:
    assert name in str(e.value)
  assert data.DATASETS == ('photo_patches', 'fashion_mnist', 'image_folder',
                           'tfds')


@pytest.mark.parametrize('config, key', [
    (dict(name='photo_patches', scales=(0.5, 2.0)), 'config.dataset.scales'),
    (dict(name='photo_patches', scales=()), 'config.dataset.scales'),
    (dict(name='photo_patches', stride_fraction=0.0),
     'config.dataset.stride_fraction'),
    (dict(name='image_folder'), 'config.dataset.path'),
    (dict(name='image_folder', path='/nonexistent/pcavae/images'),
     'config.dataset.path'),
    (dict(name='tfds'), 'config.dataset.tfds_name'),
    (dict(name='tfds', tfds_name='mnist', eval_split=''),
     'config.dataset.eval_split'),
    (dict(name='fashion_mnist', data_dir='/nonexistent/pcavae/fmnist'),
     'config.dataset.data_dir'),
])
def test_validate_names_the_key(config, key):
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    data.validate_dataset_config(_config(**config), 32)


def test_validate_rejects_bad_resolution():
  with pytest.raises(ValueError, match='resolution'):
    data.validate_dataset_config(_config(name='photo_patches'), 0)


def test_validate_accepts_defaults():
  data.validate_dataset_config(_config(name='photo_patches'), 32)
  data.validate_dataset_config(_config(name='fashion_mnist'), 32)
  data.validate_dataset_config(_config(name='tfds', tfds_name='mnist'), 32)


def test_default_config_has_every_key_and_is_overridable(tmp_path, caplog):
  config = data.default_config()
  assert config.name == 'photo_patches'
  for key in ('scales', 'stride_fraction', 'min_std', 'data_dir',
              'tfds_data_dir', 'path', 'tfds_name', 'train_split', 'eval_split',
              'image_key'):
    assert key in config, key
  with caplog.at_level(logging.WARNING):
    data.validate_dataset_config(config, 32)
  assert 'no dataset uses' not in caplog.text
  config.name = 'image_folder'
  with pytest.raises(ValueError, match=r'config\.dataset\.path'):
    data.validate_dataset_config(config, 32)
  config.path = str(tmp_path)  # a typed str placeholder accepts a path
  data.validate_dataset_config(config, 32)
  config.unlock()
  config.stride_fracton = 0.25  # a typo is reported, not silently ignored
  with caplog.at_level(logging.WARNING):
    data.validate_dataset_config(config, 32)
  assert 'stride_fracton' in caplog.text


# --------------------------------------------------------------------------
# photo_patches.


def _count_photo_decodes(monkeypatch) -> list[str]:
  """Counts the photo files photo_patches opens (decodes), caches untouched.

  photo_patches sees a stand-in for the PIL `Image` module whose `open`
  records the path and calls PIL's; the returned list grows by one path per
  decode.
  """
  decoded = []

  class CountingImage:
    def __getattr__(self, name):
      return getattr(Image, name)

    @staticmethod
    def open(path, *args, **kwargs):
      decoded.append(str(path))
      return Image.open(path, *args, **kwargs)

  monkeypatch.setattr(photo_patches, 'Image', CountingImage())
  return decoded


def test_photo_patches_offline_disjoint_and_deterministic(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args} {kwargs}')

  monkeypatch.setattr(socket.socket, 'connect', no_network)
  monkeypatch.setattr(socket, 'create_connection', no_network)
  decoded = _count_photo_decodes(monkeypatch)
  splits = data.get_splits(_config(name='photo_patches'), 32)
  train, evaluation, info = splits
  # The work is bounded: each photo is decoded once, and a second call (any
  # resolution) reuses the decoded photos.
  photos = sorted(info['train_photos'] + info['eval_photos'])
  assert sorted(decoded) == sorted(photo_patches.photo_path(n) for n in photos)
  data.get_splits(_config(name='photo_patches'), 32)
  data.get_splits(_config(name='photo_patches'), 24)
  assert len(decoded) == len(photos)
  assert isinstance(splits, data.Splits)
  assert info['name'] == 'photo_patches'
  assert info['num_train'] == len(train) and info['num_eval'] == len(evaluation)
  assert 1000 <= len(train) <= 10000 and 100 <= len(evaluation) <= 5000
  assert set(info['train_photos']) == set(photo_patches.TRAIN_PHOTOS)
  assert set(info['eval_photos']) == set(photo_patches.EVAL_PHOTOS)
  assert not set(info['train_photos']) & set(info['eval_photos'])
  train_of = {train.photo_of(i) for i in range(len(train))}
  eval_of = {evaluation.photo_of(i) for i in range(len(evaluation))}
  assert train_of == set(info['train_photos'])
  assert eval_of == set(info['eval_photos'])
  # No eval crop appears among the train crops.
  train_bytes = {x.tobytes() for x in train.images}
  assert not any(x.tobytes() in train_bytes for x in evaluation.images)
  for source in (train, evaluation):
    x = source[len(source) - 1]
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
  assert train.images.std() > 20  # real photographs, not blank crops
  assert len(np.unique(train.images.reshape(len(train), -1), axis=0)) > (
      0.9 * len(train))
  data.clear_caches()
  again = data.get_splits(_config(name='photo_patches'), 32)
  assert len(decoded) == 2 * len(photos)  # cleared caches decode again
  np.testing.assert_array_equal(again.train.images, train.images)
  np.testing.assert_array_equal(again.eval.images, evaluation.images)
  np.testing.assert_array_equal(again.train.photo_ids, train.photo_ids)


def test_photo_patches_other_resolution_and_keys():
  splits = data.get_splits(
      _config(name='photo_patches', scales=(0.5,), stride_fraction=1.0), 48)
  assert splits.train[0].shape == (48, 48, 3)
  default = data.get_splits(_config(name='photo_patches'), 48)
  assert 0 < len(splits.train) < len(default.train)


def test_photo_patches_missing_photo_is_skipped(monkeypatch, caplog):
  real = photo_patches.photo_path

  def fake(name):
    return '/nonexistent/rocket.jpg' if name == 'rocket' else real(name)

  monkeypatch.setattr(photo_patches, 'photo_path', fake)
  with caplog.at_level(logging.WARNING):
    splits = data.get_splits(_config(name='photo_patches'), 16)
  assert 'rocket' not in splits.info['train_photos']
  assert len(splits.info['train_photos']) == len(photo_patches.TRAIN_PHOTOS) - 1
  assert '/nonexistent/rocket.jpg' in caplog.text


def test_photo_patches_no_eval_photo_is_an_error(monkeypatch):
  real = photo_patches.photo_path
  monkeypatch.setattr(
      photo_patches, 'photo_path',
      lambda name: None if name in photo_patches.EVAL_PHOTOS else real(name))
  with pytest.raises(ValueError, match='at least one train and one eval'):
    data.get_splits(_config(name='photo_patches'), 16)


# --------------------------------------------------------------------------
# train_iterator.


def test_train_iterator_shapes_and_determinism():
  source = _indexed_source(23)
  first = _take(data.train_iterator(source, global_batch_size=8, seed=3), 6)
  second = _take(data.train_iterator(source, global_batch_size=8, seed=3), 6)
  other = _take(data.train_iterator(source, global_batch_size=8, seed=4), 6)
  for batch in first:
    assert batch.shape == (8, 4, 4, 3) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  np.testing.assert_array_equal(np.stack(first), np.stack(second))
  assert not np.array_equal(np.stack(first), np.stack(other))


def test_train_iterator_resume_equals_uninterrupted():
  source = _indexed_source(23)
  full = _take(data.train_iterator(source, global_batch_size=8, seed=7,
                                   num_threads=0), 12)
  resumed = _take(data.train_iterator(source, global_batch_size=8, seed=7,
                                      start_step=5), 7)
  np.testing.assert_array_equal(np.stack(resumed), np.stack(full[5:]))


class _CountingSource(sources.ArraySource):
  """An ArraySource that counts the images read from it (grain reads one at
  a time or in lists)."""

  def __init__(self, images: np.ndarray):
    super().__init__(images)
    self.reads = 0
    self._lock = threading.Lock()

  def __getitem__(self, index: int) -> np.ndarray:
    with self._lock:
      self.reads += 1
    return super().__getitem__(index)

  def _getitems(self, indices):
    with self._lock:
      self.reads += len(indices)
    return super()._getitems(indices)


def test_train_iterator_far_start_reads_one_batch():
  """Resuming at step 3e9 reads exactly the images of one batch, as at step
  0 (no replay of the skipped stream), and what it reads is right: the three
  batches of an epoch (24 images, batch 8) are a permutation of the source,
  each image the source's own pixels mapped to [-1, 1]."""
  n = 24
  images = np.broadcast_to(
      np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
  reads = {}
  for step in (0, 3 * 10**9):
    source = _CountingSource(images)
    iterator = data.train_iterator(source, global_batch_size=8, seed=1,
                                   start_step=step, num_threads=0)
    next(iterator)
    reads[step] = source.reads
  assert reads == {0: 8, 3 * 10**9: 8}
  far = _take(data.train_iterator(_CountingSource(images), global_batch_size=8,
                                  seed=1, start_step=3 * 10**9,
                                  num_threads=0), 6)
  for batch in far:
    for image in batch:
      i = int(np.rint((image[0, 0, 0] + 1.0) * 127.5))
      np.testing.assert_array_equal(image, np.full((4, 4, 3), i / 127.5 - 1.0,
                                                   np.float32))
  epochs = [np.concatenate([_indices(b) for b in far[k:k + 3]])
            for k in (0, 3)]
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  # A resume one step later continues the same stream.
  later = next(data.train_iterator(_CountingSource(images), global_batch_size=8,
                                   seed=1, start_step=3 * 10**9 + 1,
                                   num_threads=0))
  np.testing.assert_array_equal(later, far[1])


def test_train_iterator_global_batch_independent_of_process_count():
  source = _indexed_source(23)
  single = _take(data.train_iterator(source, global_batch_size=8, seed=5), 9)
  parts = [
      _take(data.train_iterator(source, global_batch_size=8, seed=5,
                                process_index=p, process_count=2), 9)
      for p in range(2)
  ]
  for step in range(9):
    assert parts[0][step].shape == (4, 4, 4, 3)
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step], parts[1][step]]), single[step])
  resumed = next(data.train_iterator(source, global_batch_size=8, seed=5,
                                     start_step=4, process_index=1,
                                     process_count=2))
  np.testing.assert_array_equal(resumed, single[4][4:])


def test_train_iterator_epochs_are_permutations_and_reshuffled():
  n = 23
  source = _indexed_source(n)
  # 9 batches of 8 straddle the epoch boundaries at 23 and 46.
  stream = np.concatenate([
      _indices(b) for b in _take(
          data.train_iterator(source, global_batch_size=8, seed=0), 9)])
  epochs = [stream[i * n:(i + 1) * n] for i in range(3)]
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(n))


def test_train_iterator_rejects_indivisible_batch():
  with pytest.raises(ValueError, match='divisible'):
    data.train_iterator(_indexed_source(5), global_batch_size=5, seed=0,
                        process_count=2)


# --------------------------------------------------------------------------
# eval_batches.


def test_eval_batches_padding_order_and_coverage():
  source = _indexed_source(10)
  batches = list(data.eval_batches(source, global_batch_size=4))
  assert len(batches) == 3
  masks = np.concatenate([m for _, m in batches])
  assert masks.dtype == np.bool_
  np.testing.assert_array_equal(masks, np.arange(12) < 10)
  images = np.concatenate([x for x, _ in batches])
  assert images.dtype == np.float32 and images.shape == (12, 4, 4, 3)
  np.testing.assert_array_equal(_indices(images[:10]), np.arange(10))
  assert (images[10:] == 0).all()
  again = list(data.eval_batches(source, global_batch_size=4, num_threads=0))
  np.testing.assert_array_equal(np.concatenate([x for x, _ in again]), images)


def test_eval_batches_per_process_rows_and_num_examples():
  source = _indexed_source(10)
  single = list(data.eval_batches(source, global_batch_size=4))
  parts = [list(data.eval_batches(source, global_batch_size=4,
                                  process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(single)
  for step, (x, m) in enumerate(single):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step][0], parts[1][step][0]]), x)
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step][1], parts[1][step][1]]), m)
  first5 = list(data.eval_batches(source, global_batch_size=4, num_examples=5))
  assert len(first5) == 2
  x = np.concatenate([b for b, _ in first5])
  m = np.concatenate([b for _, b in first5])
  np.testing.assert_array_equal(_indices(x[m]), np.arange(5))
  assert m.sum() == 5


# --------------------------------------------------------------------------
# image_folder.


def _write_folder(root: Path) -> list[int]:
  """19 good images + 1 truncated, a corrupt .jpg, an empty .png, a .txt."""
  root.mkdir()
  (root / 'nested').mkdir()
  colors = []
  for i in range(20):
    color = 10 * i + 5
    colors.append(color)
    # 48x32 with red 8-pixel bands left and right that the center crop drops.
    array = np.full((32, 48, 3), color, np.uint8)
    array[:, :8] = array[:, -8:] = (255, 0, 0)
    target = root / f'img_{i:02d}.png' if i < 16 else (
        root / 'nested' / f'img_{i:02d}.png')
    Image.fromarray(array).save(target)
  truncated = root / 'img_05.png'
  truncated.write_bytes(truncated.read_bytes()[:60])
  (root / 'corrupt.jpg').write_bytes(os.urandom(300))
  (root / 'empty.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image')
  return colors


def test_image_folder_split_skip_and_resize(tmp_path, caplog):
  root = tmp_path / 'images'
  colors = _write_folder(root)
  config = _config(name='image_folder', path=str(root))
  with caplog.at_level(logging.WARNING):
    splits = data.get_splits(config, 16)
  info = splits.info
  assert (info['num_train'], info['num_eval'], info['num_test']) == (15, 2, 3)
  assert (len(splits.train), len(splits.eval)) == (15, 2)
  assert info['num_skipped'] == 2
  assert sorted(info['skipped_examples']) == ['corrupt.jpg', 'empty.png']
  assert 'skipped 2' in caplog.text
  test = data.get_split(config, 16, 'test')
  assert len(test) == 3
  # Sorted order: top-level img_00..img_15, then nested/img_16..img_19.
  expected = colors[:15] + colors[15:17] + colors[17:]
  got = [s[i] for s in (splits.train, splits.eval, test) for i in range(len(s))]
  for i, (image, color) in enumerate(zip(got, expected)):
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    if i == 5:  # truncated: replaced by the next file, with a warning
      assert (image == colors[6]).all()
    else:
      assert (image == color).all(), i  # center crop removed the red bands
  assert 'img_05.png' in caplog.text
  batch = next(data.train_iterator(splits.train, global_batch_size=6, seed=0))
  assert batch.shape == (6, 16, 16, 3)


def test_image_folder_missing_and_empty(tmp_path):
  with pytest.raises(ValueError, match=r'config\.dataset\.path'):
    data.get_splits(_config(name='image_folder',
                            path=str(tmp_path / 'missing')), 16)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match=r'config\.dataset\.path.*found 0'):
    data.get_splits(_config(name='image_folder', path=str(empty)), 16)


# --------------------------------------------------------------------------
# fashion_mnist.


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason=f'no Fashion-MNIST copy at {FASHION_DIR}')
def test_fashion_mnist_from_idx_files(monkeypatch):
  monkeypatch.setenv('FASHION_MNIST_DIR', str(FASHION_DIR))
  splits = data.get_splits(_config(name='fashion_mnist'), 32)
  assert splits.info['num_train'] == len(splits.train) == 60000
  assert splits.info['num_eval'] == len(splits.eval) == 10000
  x = np.stack([splits.train[i] for i in range(0, 60000, 6000)])
  assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8
  assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()
  scaled = data.to_float(x)
  for border in (scaled[:, :2], scaled[:, -2:], scaled[:, :, :2],
                 scaled[:, :, -2:]):
    assert (border == -1.0).all()
  assert scaled[:, 2:30, 2:30].max() > 0.5
  batch = next(data.train_iterator(splits.train, global_batch_size=16, seed=0))
  assert batch.shape == (16, 32, 32, 3)
  resized = data.get_splits(
      _config(name='fashion_mnist', data_dir=str(FASHION_DIR)), 64)
  assert resized.eval[0].shape == (64, 64, 3)


def test_fashion_mnist_not_found_lists_every_place(tmp_path, monkeypatch):
  empty = tmp_path / 'empty'
  empty.mkdir()
  tfds_dir = tmp_path / 'tfds'
  monkeypatch.setenv('FASHION_MNIST_DIR', str(empty))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tfds_dir))
  monkeypatch.setattr(fashion_mnist, 'DEBIAN_DIR', str(tmp_path / 'debian'))
  with pytest.raises(ValueError) as e:
    data.get_splits(_config(name='fashion_mnist',
                            tfds_data_dir=str(tfds_dir)), 32)
  message = str(e.value)
  for expected in (str(empty), str(tmp_path / 'debian'), 'TFDS',
                   'FASHION_MNIST_DIR', 'apt-get install dataset-fashion-mnist',
                   'tfds build fashion_mnist'):
    assert expected in message, expected
  with pytest.raises(ValueError, match=r'config\.dataset\.data_dir'):
    data.get_splits(_config(name='fashion_mnist', data_dir=str(empty)), 32)


# --------------------------------------------------------------------------
# tfds.


def test_tfds_unprepared_is_a_clear_error(tmp_path):
  config = _config(name='tfds', tfds_name='celeb_a_hq/256',
                   data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='not prepared') as e:
    data.get_splits(config, 32)
  assert str(tmp_path) in str(e.value)
  assert 'tfds build celeb_a_hq --config=256' in str(e.value)
  with pytest.raises(ValueError, match='tfds build'):
    data.get_splits(_config(name='tfds', tfds_name='no_such_dataset_xyz',
                            data_dir=str(tmp_path)), 32)


_BUILD_TINY = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow_datasets as tfds

    class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {'image': tfds.features.Image(shape=(20, 24, 3))}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(0, 12),
                'test': self._generate_examples(100, 5)}

      def _generate_examples(self, offset, n):
        for i in range(n):
          yield i, {'image': np.full((20, 24, 3), offset + i, np.uint8)}

    TinyImages(data_dir=sys.argv[1],
               file_format='array_record').download_and_prepare()
''')


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None,
                    reason='building a TFDS dataset needs TensorFlow')
def test_tfds_tiny_array_record_dataset(tmp_path):
  # Built in a subprocess so TensorFlow stays out of the test process: reading
  # with tfds data sources must not need it.
  subprocess.run([sys.executable, '-c', _BUILD_TINY, str(tmp_path)],
                 check=True, capture_output=True, timeout=300)
  config = _config(name='tfds', tfds_name='tiny_images', data_dir=str(tmp_path),
                   train_split='train', eval_split='test')
  splits = data.get_splits(config, 16)
  assert (splits.info['num_train'], splits.info['num_eval']) == (12, 5)
  train_values = sorted(int(splits.train[i][0, 0, 0]) for i in range(12))
  assert train_values == list(range(12))
  assert splits.eval[0].shape == (16, 16, 3)
  assert {int(splits.eval[i][0, 0, 0]) for i in range(5)} == set(
      range(100, 105))
  batch = next(data.train_iterator(splits.train, global_batch_size=4, seed=0))
  assert batch.shape == (4, 16, 16, 3)
  with pytest.raises(ValueError, match=r'config\.dataset\.image_key'):
    data.get_splits(_config(name='tfds', tfds_name='tiny_images',
                            data_dir=str(tmp_path), image_key='img'), 16)
