r"""KL-VAE (AutoencoderKL, Rombach et al. 2022): a diagonal Gaussian latent.

Bottleneck `kl`: 1x1-conv heads give the mean and log-variance (clamped to
[-30, 20]) of 4 channels per location; training decodes a reparameterised
sample, eval the mean; loss 1e-6 * KL (summed per image, as latent
diffusion). `channels=` sets the latent channels, `kl_weight=` the weight.

Flags (all families): `runlocal` shrinks everything to finish in minutes on 2
CPU cores (32 px, channels 32/64, D = 64, an 8x8 latent, 1500 steps);
`gan` switches on the VQGAN objective (L1 + LPIPS + PatchGAN, see
pcavae/vqgan.py); `res=`, `dataset=` override those keys.

The comparison job (`experiments/baselines_runlocal.py` runs every family
this way) is

  python -m pcavae.main --config=configs/kl.py:runlocal --workdir=workdirs/baselines/kl

which trains on the embedded `photo_patches` data and writes, in the
workdir, `metrics.jsonl` with eval PSNR/SSIM (and codebook usage,
perplexity and dead codes over the eval split for discrete bottlenecks),
reconstruction grids in `images/` and checkpoints; README.md has the
numbers.

Latent bits per image: tokens * channels * 32 (runlocal: 64 * 4 * 32 = 8192).
At full size (64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/kl.py --workdir=workdirs/kl
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _finish(c, a):
  """Applies the shared flags (runlocal first: the others override it)."""
  if a.runlocal:
    common.runlocal(c)
  if a.res:
    c.resolution = a.res
  if a.dataset:
    c.dataset.name = a.dataset
  if a.gan:
    common.vqgan_objective(c)
  return c


def get_config(arg=None):
  """Returns the kl config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                       channels=0, kl_weight=0.0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='kl', latent_channels=4, kl_weight=1e-6)
  if a.channels:
    c.model.bottleneck.latent_channels = a.channels
  if a.kl_weight:
    c.model.bottleneck.kl_weight = a.kl_weight
  return _finish(c, a)
