r"""EMA-VQ: a VQ-VAE codebook learned by exponential moving averages.

Bottleneck `ema_vq`: the codebook (collection `vq_ema`) follows EMAs of the
assigned encoder outputs (decay 0.99, Laplace smoothing eps 1e-5); loss is
the commitment term 0.25 ||z - sg(e)||^2 only; K = 1024. `restart=` (e.g.
restart=0.03) turns on dead-code restarts for codes whose EMA hit count is
below it; `k=` sets K.

Flags (all families): `runlocal` shrinks everything to finish in minutes on 2
CPU cores (32 px, channels 32/64, D = 64, an 8x8 latent, 1500 steps);
`gan` switches on the VQGAN objective (L1 + LPIPS + PatchGAN, see
pcavae/vqgan.py); `res=`, `dataset=` override those keys; `warmup=N`
trains as a plain autoencoder for N steps first (AE warm-up,
pcavae/warmup.py; also `--config.model.bottleneck.warmup_steps=N`).

The comparison job (`experiments/baselines_runlocal.py` runs every family
this way) is

  python -m pcavae.main --config=configs/ema_vq.py:runlocal --workdir=workdirs/baselines/ema_vq

which trains on the embedded `photo_patches` data and writes, in the
workdir, `metrics.jsonl` with eval PSNR/SSIM (and codebook usage,
perplexity and dead codes over the eval split for discrete bottlenecks),
reconstruction grids in `images/` and checkpoints; README.md has the
numbers.

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/ema_vq.py --workdir=workdirs/ema_vq
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
  """Returns the ema_vq config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                       warmup=0,
                       k=0, restart=0.0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='ema_vq', codebook_size=1024, beta=0.25,
                            decay=0.99, eps=1e-5, dead_code_threshold=None)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.restart:
    c.model.bottleneck.dead_code_threshold = a.restart
  return _finish(common.warmup(c, a.warmup), a)
