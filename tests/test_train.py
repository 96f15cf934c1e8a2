"""End-to-end: train_and_evaluate on a tiny config, resume, reconstruct,
config validation, the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, assert_same_image, tiny_config, uint8_reference
from pcavae import checkpointing
from pcavae import configlib
from pcavae import reconstruct
from pcavae import tiling
from pcavae import train
from pcavae import train_state
from pcavae import writers
from pcavae.data import image_folder


def test_train_and_evaluate_writes_outputs_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 6
  assert 0 < final['eval/psnr'] < 60 and -1 <= final['eval/ssim'] <= 1
  assert final['eval/num_images'] == 16
  records = writers.read_metrics(workdir)
  steps = [r['step'] for r in records if 'loss' in r]
  assert steps == [2, 4, 6]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert any('bottleneck/pca_update_norm' in r for r in records)
  assert os.path.exists(os.path.join(workdir, 'images',
                                     'reconstructions_step_0000006.png'))
  grid = np.asarray(Image.open(os.path.join(
      workdir, 'images', 'reconstructions_step_0000006.png')))
  assert grid.shape[0] > 2 * 16 and grid.std() > 0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['bottleneck']['kind'] == 'pca'

  # A second call with more steps resumes from step 6 and continues.
  config.num_train_steps = 9
  final2 = train.train_and_evaluate(config, workdir)
  assert final2['step'] == 9
  records = writers.read_metrics(workdir)
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6, 8, 9]
  assert '9' in os.listdir(os.path.join(workdir, 'checkpoints'))

  # The restored model reconstructs a folder with one jitted function, and
  # each PNG is the model's own output on the preprocessed input (within one
  # level of uint8 rounding: batches differ in padding, so floats may too).
  inp = tmp_path / 'in'
  (inp / 'sub').mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name in ('a.png', 'sub/b.jpg'):
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(
        inp / name)
  config, model, variables, _ = train.restore_model(workdir)

  def own_output(image):  # (H, W, 3) uint8 -> the model's uint8 output
    # Tiles overlapping by a quarter (4 px), cross-faded: the default.
    tiles, grid = tiling.tile_overlapping(
        image.astype(np.float32) / 127.5 - 1, 16, 4)
    recon, _ = model.apply(variables, tiles, train=False)
    return uint8_reference(tiling.blend(np.asarray(recon), grid))

  for full_size in (True, False):
    out = tmp_path / f'out_{full_size}'
    result = reconstruct.reconstruct_folder(workdir, str(inp), str(out),
                                            batch_size=4, full_size=full_size,
                                            lpips=False, progress=False)
    assert sorted(os.path.relpath(p, out) for p in result.written) == [
        'a.png', os.path.join('sub', 'b.png')]
    assert not result.skipped
    for name in ('a', 'sub/b'):
      source = next(inp.glob(name + '.*'))
      image = image_folder.read_rgb(str(source))
      if not full_size:
        image = image_folder.load_image(str(source), config.resolution)
      written = np.asarray(Image.open(out / (name + '.png')))
      assert written.shape == ((40, 30, 3) if full_size else (16, 16, 3))
      assert_same_image(written, own_output(image))
      assert written.std() > 0


def test_resume_reads_checkpoints_of_the_earlier_state_layout(tmp_path):
  """A run whose checkpoints hold each collection at the top level of the
  train state (before `train_state.COLLECTIONS`) resumes."""
  config = tiny_config(num_train_steps=3, **{'eval.lpips': False})
  new = str(tmp_path / 'new')
  train.train_and_evaluate(config, new)
  _, _, variables, _ = train.restore_model(new)
  old = str(tmp_path / 'old')
  with open(os.path.join(new, 'config.json')) as f:
    saved_config = f.read()
  os.makedirs(old)
  with open(os.path.join(old, 'config.json'), 'w') as f:
    f.write(saved_config)
  ckpt = checkpointing.Checkpointer(os.path.join(new, 'checkpoints'))
  state, step = ckpt.restore_latest(checkpointing.abstract(
      _abstract_state(config)))
  ckpt.close()
  legacy = train_state.to_legacy_layout(state)
  assert 'pca' in legacy and train_state.COLLECTIONS not in legacy
  ckpt = checkpointing.Checkpointer(os.path.join(old, 'checkpoints'))
  ckpt.save(step, legacy)
  ckpt.close()
  _, _, restored, restored_step = train.restore_model(old)
  assert restored_step == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(restored))
  config.num_train_steps = 4
  assert train.train_and_evaluate(config, old)['step'] == 4


def _abstract_state(config):
  model = train.create_model(config)
  tx, _ = train.make_optimizer(config)
  return jax.eval_shape(train.make_init_fn(model, tx, config),
                        jax.random.PRNGKey(0))


@pytest.mark.parametrize('key,value,match', [
    ('model.bottleneck.kind', 'nope', 'config.model.bottleneck.kind'),
    ('model.bottleneck.num_components', 9,
     'config.model.bottleneck.num_components'),
    ('resolution', 18, 'config.resolution'),
    ('model.bottleneck.mode', 'diagonal', 'config.model.bottleneck.mode'),
    ('model.bottleneck.colour', 3, 'config.model.bottleneck.colour'),
    ('batch_size', 0, 'config.batch_size'),
    ('optimizer.schedule', 'linear', 'config.optimizer.schedule'),
    ('dataset.name', 'imagenet', 'config.dataset.name'),
    ('compute_dtype', 'float16', 'config.compute_dtype'),
    ('model.conv_algorithm', 'fft', 'config.model.conv_algorithm'),
    ('eval.units', ('reconstruction', 'psnr'), 'config.eval.units'),
])
def test_invalid_configs_fail_before_compute_naming_the_key(
    tmp_path, key, value, match):
  config = tiny_config(**{key: value})
  with pytest.raises(ValueError, match=match.replace('.', r'\.')):
    train.train_and_evaluate(config, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad')  # nothing was started


@pytest.mark.parametrize('algorithm,dtype,expected', [
    ('auto', 'float32', True), ('auto', 'bfloat16', False),
    ('direct', 'float32', False), ('winograd', 'bfloat16', True)])
def test_conv_algorithm_resolution(algorithm, dtype, expected):
  """'auto' is Winograd on the CPU backend (these tests') in float32 only."""
  config = tiny_config()
  config.model.conv_algorithm = algorithm
  config.compute_dtype = dtype
  assert train.uses_winograd(config) is expected
  assert train.create_model(config).winograd is expected


def test_config_saved_before_a_key_existed_still_matches():
  """A run saved before `model.conv_algorithm` existed resumes at its
  default without --config_mismatch=allow; another value is a difference."""
  config = tiny_config()
  saved = json.loads(json.dumps(config.to_dict(), default=str))
  del saved['model']['conv_algorithm']
  assert configlib.differences(saved, config) == []
  config.model.conv_algorithm = 'direct'
  assert configlib.differences(saved, config) == [
      ('model.conv_algorithm', '<absent>', 'direct')]


def test_config_saved_with_the_resolved_loss_still_matches():
  """Runs saved before `loss.reconstruction='auto'` (with 'mse', and
  runlocal's disc_start 10000) resume under the plain objective, where both
  mean the same; under the VQGAN objective 'auto' is L1 and disc_start acts,
  so a saved 'mse' or another disc_start is a difference."""
  config = tiny_config('vqvae')
  saved = json.loads(json.dumps(config.to_dict(), default=str))
  saved['loss']['reconstruction'] = 'mse'
  saved['loss']['disc_start'] = 10_000
  assert configlib.differences(saved, config) == []
  config.loss.kind = 'vqgan'
  saved['loss']['kind'] = 'vqgan'
  assert configlib.differences(saved, config) == [
      ('loss.disc_start', 10_000, config.loss.disc_start),
      ('loss.reconstruction', 'mse', 'l1')]


def test_q_bounded_by_global_dim():
  config = tiny_config(arg='setting=global,runlocal')
  config.model.bottleneck.num_components = 65
  with pytest.raises(ValueError, match='global_dim'):
    configlib.validate(config)


def test_every_setting_builds_a_valid_config():
  for setting in ('spatial16', 'spatial4', 'global', 'shared'):
    for extra in ('', ',runlocal'):
      configlib.validate(configlib.load(
          os.path.join(ROOT, 'configs', 'pcavae.py') + f':setting={setting}'
          + extra))
  with pytest.raises(ValueError, match='Unknown config argument'):
    configlib.load(os.path.join(ROOT, 'configs', 'pcavae.py') + ':resolution=3')


def test_cli_runs_and_prints_outputs(tmp_path):
  workdir = tmp_path / 'cli'
  cmd = [sys.executable, '-m', 'pcavae.main',
         '--config=' + os.path.join(ROOT, 'configs', 'pcavae.py') + ':runlocal',
         f'--workdir={workdir}', '--config.num_train_steps=2',
         '--config.resolution=16', '--config.model.channels=(8,16)',
         '--config.model.latent_dim=8', '--config.model.num_res_layers=1',
         '--config.model.bottleneck.num_components=4',
         '--config.batch_size=4', '--config.eval.batch_size=4',
         '--config.eval.num_examples=8', '--config.log_every_steps=1',
         '--config.tensorboard=False']
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Outputs in {workdir}' in out.stdout
  assert 'steps/s' in out.stderr and 'ETA' in out.stderr
  assert json.loads(out.stdout.splitlines()[0])['step'] == 2


def test_bfloat16_compute_keeps_float32_state(tmp_path):
  workdir = str(tmp_path / 'bf16')
  final = train.train_and_evaluate(
      tiny_config(num_train_steps=3, compute_dtype='bfloat16'), workdir)
  assert np.isfinite(final['eval/psnr'])
  _, model, variables, _ = train.restore_model(workdir)
  assert model.dtype == np.dtype('bfloat16')
  import jax  # pylint: disable=g-import-not-at-top
  dtypes = {str(x.dtype) for x in jax.tree.leaves(variables)
            if x.dtype.kind == 'f'}
  assert dtypes == {'float32'}  # parameters and PCA state stay float32
  x = np.zeros((2, 16, 16, 3), np.float32)
  (_, aux) = model.apply(variables, x, train=False)
  assert aux['z_e'].dtype == np.dtype('bfloat16')  # activations in bf16


# ---------------------------------------------------------------------------
# PSNR and SSIM: unit values and the eval average over exactly the eval set.


def test_psnr_unit_value():
  from pcavae import metrics  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).uniform(0, 0.9, (3, 16, 16, 3))
  x = x.astype(np.float32)
  # MSE 0.01 at peak 1 is exactly 20 dB; a peak of 2 ([-1, 1]) gives 26 dB.
  np.testing.assert_allclose(np.asarray(metrics.psnr(x, x + 0.1)), 20.0,
                             atol=1e-4)
  # The model range [-1, 1] maps to [0, 1] before PSNR: an error of 0.2 in
  # model units is 0.1 in unit range, 20 dB again.
  y = np.float32(2) * x - 1
  np.testing.assert_allclose(
      np.asarray(metrics.psnr(metrics.to_unit(y), metrics.to_unit(y + 0.2))),
      20.0, atol=1e-3)


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """SSIM per image with Gaussian 11x11 windows, sigma 1.5 (Wang et al.)."""
  from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top
  return np.array([
      structural_similarity(a, b, data_range=1.0, channel_axis=-1,
                            gaussian_weights=True, sigma=1.5,
                            use_sample_covariance=False)
      for a, b in zip(x.astype(np.float64), y.astype(np.float64))])


def test_ssim_matches_skimage():
  from pcavae import metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (3, 24, 24, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, y)),
                             _skimage_ssim(x, y), atol=1e-4)


def test_eval_psnr_ssim_average_exactly_the_eval_images(tmp_path):
  """10 eval images at eval batch 8: the padded 6 of the second batch must
  not enter the means (`eval/psnr`, `eval/ssim` recomputed here from the
  restored model on the first 10 images of the eval split)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pcavae import data  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run10')
  config = tiny_config(num_train_steps=2, eval_every_steps=2)
  config.eval.num_examples = 10
  config.eval.lpips = False
  config.eval.spectra_num_images = 0
  final = train.train_and_evaluate(config, workdir)
  assert final['eval/num_images'] == 10
  _, model, variables, step = train.restore_model(workdir)
  assert step == 2
  source = data.get_split(config.dataset, config.resolution, 'eval')
  images = np.stack([np.asarray(source[i]) for i in range(10)])
  assert images.dtype == np.uint8
  x = images.astype(np.float32) / 127.5 - 1.0
  recon, _ = jax.jit(lambda v, a: model.apply(v, a, train=False))(variables,
                                                                   x)
  x01 = images.astype(np.float64) / 255.0
  r01 = np.clip((np.asarray(recon, np.float64) + 1.0) / 2.0, 0.0, 1.0)
  mse = np.mean(np.square(x01 - r01), axis=(1, 2, 3))
  psnr = 10.0 * np.log10(1.0 / mse)
  np.testing.assert_allclose(final['eval/psnr'], np.mean(psnr), rtol=1e-5)
  np.testing.assert_allclose(final['eval/ssim'],
                             np.mean(_skimage_ssim(x01, r01)), atol=1e-4)
