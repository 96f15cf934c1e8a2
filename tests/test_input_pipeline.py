"""experiments/input_pipeline.py runs as a process (quick mode) and measures
what it says it measures (issue 19)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_input_pipeline_quick(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'input_pipeline.py'),
       '--quick', '--no_flops', '--datasets=photo_patches,image_folder',
       '--images=24', f'--out={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(tmp_path / 'input_pipeline.jsonl') as f:
    records = [json.loads(line) for line in f]
  got = {(r['measurement'], r['workers']): r for r in records}
  assert set(got) == {(f'pipeline/{d}', w)
                      for d in ('photo_patches', 'image_folder')
                      for w in (0, 1)}
  for r in got.values():
    assert r['shape'] == [16, 64, 64, 3] and r['dtype'] == 'float32'
    assert -1.0 <= r['min'] < r['max'] <= 1.0
    assert r['images_per_s'] > 0 and r['batches'] == 3
  # The image_folder source pickles into grain's worker processes, and a
  # worker process yields the same stream as the consuming thread.
  for d in ('photo_patches', 'image_folder'):
    assert (got[(f'pipeline/{d}', 0)]['checksum']
            == got[(f'pipeline/{d}', 1)]['checksum'])
  assert len(os.listdir(tmp_path / 'jpegs')) == 24
  assert (tmp_path / 'input_pipeline.md').exists()


def test_train_iterator_workers_give_the_same_stream():
  """`config.data_workers` (grain worker processes) changes who decodes,
  not what: the batches from step 3 on equal those read in this process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from pcavae.data import pipeline  # pylint: disable=g-import-not-at-top
  source = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), np.uint8)
  kw = dict(global_batch_size=4, seed=7, start_step=3)
  local = pipeline.train_iterator(source, **kw)
  workers = pipeline.train_iterator(source, workers=2, **kw)
  for _ in range(12):        # past an epoch: the next permutation too
    np.testing.assert_array_equal(next(workers), next(local))
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match='config.data_workers'):
      pipeline.train_iterator(source, workers=bad, **kw)


def test_data_workers_key_is_validated():
  import pytest  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from pcavae import configlib  # pylint: disable=g-import-not-at-top
  configlib.validate(tiny_config(data_workers=2))
  # (The ConfigDict's int type already refuses 0.5 when it is set.)
  with pytest.raises(ValueError, match='config.data_workers'):
    configlib.validate(tiny_config(data_workers=-1))
  # A run resumes with another worker count (the stream is the same).
  assert configlib.differences(tiny_config(), tiny_config(data_workers=3)) == []
