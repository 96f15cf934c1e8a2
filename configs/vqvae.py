r"""VQ-VAE (van den Oord et al. 2017): nearest code, gradient-trained codebook.

Bottleneck `vq`: straight-through `z + sg(e - z)`, loss
`||sg(z) - e||^2 + beta ||z - sg(e)||^2` with beta = 0.25, K = 1024 codes of
dimension D. `legacy` puts beta on the codebook term instead (taming's
default, `legacy=True` there); `k=` sets K.

Flags (all families): `runlocal` shrinks everything to finish in minutes on 2
CPU cores (32 px, channels 32/64, D = 64, an 8x8 latent, 1500 steps);
`gan` switches on the VQGAN objective (L1 + LPIPS + PatchGAN, see
pcavae/vqgan.py); `res=`, `dataset=` override those keys; `warmup=N`
trains as a plain autoencoder for N steps first (AE warm-up,
pcavae/warmup.py; also `--config.model.bottleneck.warmup_steps=N`).

The comparison job (`experiments/baselines_runlocal.py` runs every family
this way) is

  python -m pcavae.main --config=configs/vqvae.py:runlocal --workdir=workdirs/baselines/vqvae

which trains on the embedded `photo_patches` data and writes, in the
workdir, `metrics.jsonl` with eval PSNR/SSIM (and codebook usage,
perplexity and dead codes over the eval split for discrete bottlenecks),
reconstruction grids in `images/` and checkpoints; README.md has the
numbers.

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/vqvae.py --workdir=workdirs/vqvae
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
  """Returns the vqvae config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                       warmup=0,
                        k=0, legacy=False)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='vq', codebook_size=1024, beta=0.25,
                            legacy_beta=False)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.legacy:
    c.model.bottleneck.legacy_beta = True
  return _finish(common.warmup(c, a.warmup), a)
