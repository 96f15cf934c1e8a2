"""Priors on real trained runs: `python -m pcavae.train_prior` and
`python -m pcavae.sample` as processes, and the latents they model checked
against the codec and the model."""

import json
import os
import subprocess
import sys


import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from conftest import tiny_config

PRIOR_FLAGS = ['--size=tiny', '--steps=12', '--batch_size=8',
               '--train_images=20', '--eval_images=8', '--log_every=6']


def _command(module):
  """`python -m <module>`, or a console script by its name (`pcavae-...`),
  installed beside this Python."""
  if module.startswith('pcavae-'):
    path = os.path.join(os.path.dirname(sys.executable), module)
    if not os.path.exists(path):
      pytest.fail(f'console script {module} not installed: pip install -e .')
    return [path]
  return [sys.executable, '-m', module]


def _run(module, *args, check=True):
  proc = subprocess.run(_command(module) + list(args), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def fsq_prior(codec_fsq_workdir, tmp_path_factory):
  prior = str(tmp_path_factory.mktemp('prior') / 'fsq')
  proc = _run('pcavae.train_prior', f'--workdir={codec_fsq_workdir}',
              f'--prior={prior}', *PRIOR_FLAGS)
  assert proc.stdout.startswith('prior: '), proc.stdout
  return prior


def test_fsq_prior_models_the_codec_symbols(codec_fsq_workdir, fsq_prior):
  """The prior's training sequences are the codec's symbols: their
  histogram over the first 20 training images equals the codec's own
  counts, and `prior.json` states the code's size."""
  from pcavae import codec
  from pcavae import configlib
  from pcavae import train
  with open(os.path.join(fsq_prior, 'prior.json')) as f:
    record = json.load(f)
  config = train.load_config(codec_fsq_workdir)
  tokens_per_image = configlib.latent_shape(config)[0] ** 2
  levels = tuple(config.model.bottleneck.levels)
  assert record['prior']['length'] == tokens_per_image
  assert record['prior']['vocab'] == int(np.prod(levels))
  np.testing.assert_allclose(record['bits_per_image'], tokens_per_image
                             * np.log2(np.prod(levels)), rtol=1e-12)
  assert record['train_images'] == 20 and record['kind'] == 'fsq'
  assert 0 < record['heldout_loss_bits'] < 2 * np.log2(np.prod(levels))
  with np.load(os.path.join(fsq_prior, 'tokens.npz')) as f:
    train_tokens = f['train']
  counts = codec.Codec(codec_fsq_workdir, count_images=20).code_counts()
  np.testing.assert_array_equal(
      np.bincount(train_tokens.reshape(-1), minlength=counts.size), counts)


def test_sample_cli_writes_seeded_images(codec_fsq_workdir, fsq_prior,
                                         tmp_path):
  from pcavae import train
  res = train.load_config(codec_fsq_workdir).resolution
  outs = []
  for name, seed, command in (('a', 0, 'pcavae.sample'),
                              ('b', 0, 'pcavae-sample'),
                              ('c', 1, 'pcavae.sample')):
    out = tmp_path / name
    proc = _run(command, f'--workdir={codec_fsq_workdir}',
                f'--prior={fsq_prior}', '--num=5', '--batch_size=4',
                f'--output={out}', f'--seed={seed}')
    assert 'wrote 5 samples' in proc.stdout
    assert 'sample: 5/5 images' in proc.stderr
    names = sorted(os.listdir(out))
    assert names == ['grid.png', 'sample_0.png', 'sample_1.png',
                     'sample_2.png', 'sample_3.png', 'sample_4.png',
                     'samples.json']
    ims = np.stack([np.asarray(Image.open(out / f'sample_{i}.png'))
                    for i in range(5)])
    assert ims.shape == (5, res, res, 3) and ims.dtype == np.uint8
    outs.append(ims)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.any(outs[0] != outs[2])
  # Batch k draws from fold_in(seed, k): --num does not change a sample.
  out = tmp_path / 'd'
  _run('pcavae.sample', f'--workdir={codec_fsq_workdir}',
       f'--prior={fsq_prior}', '--num=2', '--batch_size=4', f'--output={out}')
  np.testing.assert_array_equal(
      np.asarray(Image.open(out / 'sample_1.png')), outs[0][1])


def test_pca_prior_at_a_budget(codec_pca_workdir, tmp_path):
  """A PCA prior at a water-filled budget models exactly the sent
  coefficients: the alphabets are 2^bits of the codec's allocation and sum
  to the budget; samples decode through the codec's decoder."""
  from pcavae import codec
  from pcavae import generation
  prior_dir = str(tmp_path / 'pca')
  _run('pcavae-train-prior', f'--workdir={codec_pca_workdir}',
       f'--prior={prior_dir}', '--budget=40', *PRIOR_FLAGS)
  prior = generation.Prior(prior_dir, codec_pca_workdir)
  assert prior.record['rate_setting'] == 'budget'
  assert prior.record['rate'] == 40
  assert prior.space.bits_per_image == 40
  c = codec.Codec(codec_pca_workdir, budget=40)
  side = c.coding(c.rate_kind, c.rate).side
  np.testing.assert_array_equal(prior.space.alphabets,
                                2 ** side[side > 0])
  images, seqs = prior.sample(3, seed=2, batch_size=3, progress=False)
  prior.space.check(seqs, 'samples')
  _, decode, _ = c.functions(c.rate_kind, c.rate)
  np.testing.assert_allclose(
      images, np.asarray(decode(c.variables, prior.space.symbols(seqs))),
      atol=1e-6)


@pytest.fixture(scope='module')
def kl_workdir(tmp_path_factory):
  from pcavae import train
  workdir = str(tmp_path_factory.mktemp('kl'))
  config = tiny_config('kl', **{'eval.lpips': False, 'eval_every_steps': 6,
                                'checkpoint_every_steps': 6})
  train.train_and_evaluate(config, workdir)
  return workdir


def test_kl_coefficients_quantized_like_the_pca(kl_workdir):
  """KL's posterior means, centred and scaled by their training statistics
  (checked against numpy on the model's own outputs) and quantized at 16
  bits, decode to the model's eval reconstruction; at 2 bits they are the
  4-level Gaussian quantizer's levels."""
  from pcavae import data
  from pcavae import generation
  from pcavae import train
  from pcavae.models import coding
  latent = generation.make_latent(kl_workdir, bits=16, batch_size=8)
  config = latent.config
  splits = data.get_splits(config.dataset, config.resolution)
  latent.measure_statistics(splits.train, 16)
  images = np.concatenate([im[m] for im, m in data.eval_batches(
      splits.train, global_batch_size=8, num_examples=16)])
  _, aux = latent.model.apply(latent.variables, images, train=False)
  y = np.asarray(aux['coefficients'], np.float64).reshape(
      -1, aux['coefficients'].shape[-1])
  np.testing.assert_allclose(latent.stats['mean'], y.mean(0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(latent.stats['sigma'], y.std(0), rtol=1e-4)
  recon, _ = train.restore_model(kl_workdir)[1].apply(
      latent.variables, images[:4], train=False)
  np.testing.assert_allclose(latent.decode(latent.encode(images[:4])),
                             recon, atol=2e-3)
  two = generation.make_latent(kl_workdir, bits=2, batch_size=8,
                               stats=latent.stats)
  symbols = two.encode(images[:4])
  assert two.space.vocab == 4 and symbols.max() <= 3
  y4 = np.asarray(aux['coefficients'][:4])
  step = coding.gaussian_uniform_step(2) * latent.stats['sigma']
  expect = np.clip(np.floor((y4 - latent.stats['mean']) / step) + 2, 0, 3)
  np.testing.assert_array_equal(symbols, expect)


def test_cli_errors_name_the_flag(codec_fsq_workdir, codec_pca_workdir,
                                  kl_workdir, fsq_prior, tmp_path):
  proc = _run('pcavae.train_prior', f'--workdir={codec_fsq_workdir}',
              f'--prior={tmp_path / "x"}', '--budget=64', check=False)
  assert proc.returncode != 0 and '--budget' in proc.stderr
  proc = _run('pcavae.train_prior', f'--workdir={kl_workdir}',
              f'--prior={tmp_path / "y"}', check=False)
  assert proc.returncode != 0 and '--bits' in proc.stderr
  proc = _run('pcavae.sample', f'--workdir={codec_pca_workdir}',
              f'--prior={fsq_prior}', f'--output={tmp_path / "z"}',
              check=False)
  assert proc.returncode != 0 and 'is not the model' in proc.stderr
  proc = _run('pcavae.sample', f'--workdir={codec_fsq_workdir}',
              f'--prior={tmp_path}', f'--output={tmp_path / "z"}',
              check=False)
  assert proc.returncode != 0 and 'prior.json not found' in proc.stderr
  proc = _run('pcavae.sample', f'--workdir={codec_fsq_workdir}',
              f'--prior={fsq_prior}', f'--output={tmp_path / "z"}',
              '--num=0', check=False)
  assert proc.returncode != 0 and '--num=0' in proc.stderr

