r"""VQGAN-FC (ViT-VQGAN, Yu et al. 2022): factorized, l2-normalised codes.

Bottleneck `vqgan_fc`: a linear map to an 8-dimensional lookup space,
l2-normalised inputs and codes (cosine lookup), K = 1024, `vq` loss on the
normalised vectors, a linear map back to D. Pass `gan` for the VQGAN
objective the method was published with; `k=`, `lookup_dim=` set K and the
lookup dimension.

Flags (all families): `runlocal` shrinks everything to finish in minutes on 2
CPU cores (32 px, channels 32/64, D = 64, an 8x8 latent, 1500 steps);
`gan` switches on the VQGAN objective (L1 + LPIPS + PatchGAN, see
pcavae/vqgan.py); `res=`, `dataset=` override those keys; `warmup=N`
trains as a plain autoencoder for N steps first (AE warm-up,
pcavae/warmup.py; also `--config.model.bottleneck.warmup_steps=N`).

The comparison job (`experiments/baselines_runlocal.py` runs every family
this way) is

  python -m pcavae.main --config=configs/vqgan_fc.py:runlocal --workdir=workdirs/baselines/vqgan_fc

which trains on the embedded `photo_patches` data and writes, in the
workdir, `metrics.jsonl` with eval PSNR/SSIM (and codebook usage,
perplexity and dead codes over the eval split for discrete bottlenecks),
reconstruction grids in `images/` and checkpoints; README.md has the
numbers.

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/vqgan_fc.py --workdir=workdirs/vqgan_fc
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
  """Returns the vqgan_fc config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                       warmup=0,
                       k=0, lookup_dim=0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='vqgan_fc', codebook_size=1024, lookup_dim=8,
                            beta=0.25, legacy_beta=False)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.lookup_dim:
    c.model.bottleneck.lookup_dim = a.lookup_dim
  return _finish(common.warmup(c, a.warmup), a)
