r"""FSQ (Mentzer et al. 2023): finite scalar quantization, no codebook.

Bottleneck `fsq`: each location is mapped to len(levels) channels, bounded
(tanh) and rounded with a straight-through gradient; levels (8, 5, 5, 5)
give 1000 implicit codes (about 2^10, the paper's choice for that size);
`levels=8-8-8-6-5` (dash-separated) picks another set, e.g. the paper's
2^14 one.

Flags (all families): `runlocal` shrinks everything to finish in minutes on 2
CPU cores (32 px, channels 32/64, D = 64, an 8x8 latent, 1500 steps);
`gan` switches on the VQGAN objective (L1 + LPIPS + PatchGAN, see
pcavae/vqgan.py); `res=`, `dataset=` override those keys; `warmup=N`
trains as a plain autoencoder for N steps first (AE warm-up,
pcavae/warmup.py; also `--config.model.bottleneck.warmup_steps=N`).

The comparison job (`experiments/baselines_runlocal.py` runs every family
this way) is

  python -m pcavae.main --config=configs/fsq.py:runlocal --workdir=workdirs/baselines/fsq

which trains on the embedded `photo_patches` data and writes, in the
workdir, `metrics.jsonl` with eval PSNR/SSIM (and codebook usage,
perplexity and dead codes over the eval split for discrete bottlenecks),
reconstruction grids in `images/` and checkpoints; README.md has the
numbers.

Latent bits per image: tokens * sum log2(L_i) (runlocal: ceil(64 * 9.97) =
638). At full size (64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/fsq.py --workdir=workdirs/fsq
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
  """Returns the fsq config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                       warmup=0,
                       levels='')
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='fsq', levels=(8, 5, 5, 5))
  if a.levels:
    c.model.bottleneck.levels = tuple(int(l) for l in a.levels.split('-'))
  return _finish(common.warmup(c, a.warmup), a)
