"""Latent bit accounting on known configs."""

import math
import os

import pytest

from conftest import ROOT
from pcavae import bits
from pcavae import configlib


def _config(family, arg='runlocal'):
  return configlib.load(os.path.join(ROOT, 'configs', f'{family}.py') + ':'
                        + arg)


@pytest.mark.parametrize('family,arg,expected', [
    # runlocal: 32 px, two stride-2 stages -> an 8x8 latent (64 tokens), D 64.
    ('vqvae', 'runlocal', 64 * 10),                  # K = 1024
    ('vqvae', 'runlocal,k=512', 64 * 9),
    ('ema_vq', 'runlocal', 64 * 10),
    ('simvq', 'runlocal,k=8192', 64 * 13),
    ('vqgan_fc', 'runlocal', 64 * 10),
    ('fsq', 'runlocal,levels=8-8-8-6-5', math.ceil(64 * math.log2(15360))),
    ('fsq', 'runlocal,levels=4-4', 64 * 4),
    ('lfq', 'runlocal,d=12', 64 * 12),
    ('kl', 'runlocal', 64 * 4 * 32),
    ('ae', 'runlocal', 64 * 64 * 32),
    ('pcavae', 'runlocal', 64 * 16 * 32),             # spatial, Q = 16
    ('pcavae', 'setting=shared,runlocal', 64 * 16 * 32),
    ('pcavae', 'setting=global,runlocal', 1 * 16 * 32),  # one vector
    # Full size: 64 px, a 16x16x256 latent.
    ('vqvae', '', 256 * 10),
    ('fsq', '', math.ceil(256 * math.log2(1000))),
    ('pcavae', 'setting=spatial16,q=51', 256 * 51 * 32),
])
def test_latent_bits_of_known_configs(family, arg, expected):
  assert bits.latent_bits(_config(family, arg)) == expected


def test_fsq_sum_of_log_levels_equals_log_of_product():
  c = _config('fsq', 'runlocal')  # (8, 5, 5, 5): 1000 codes, 9.97 bits
  assert bits.num_codes(c) == 1000
  assert bits.latent_bits(c) == math.ceil(
      64 * (3 + 3 * math.log2(5)) - 1e-9) == 638


def test_pca_coefficient_bits_and_defaults():
  c = _config('pcavae', 'runlocal')
  c.model.bottleneck.coefficient_bits = 6
  assert bits.latent_bits(c) == 64 * 16 * 6
  # A key left out of the config takes the bottleneck's own default.
  v = _config('vqvae', 'runlocal')
  del v.model.bottleneck['codebook_size']
  assert bits.num_codes(v) == 1024
  assert bits.num_codes(_config('lfq', 'runlocal,d=9')) == 512
  assert bits.num_codes(_config('kl', 'runlocal')) is None
