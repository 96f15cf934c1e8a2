r"""PCA-VAE (arXiv 2602.18904): the online-PCA bottleneck.

Settings (the `setting=` arg), each the reference's at 64 px:
  spatial16  one PCA per location of a 16x16x256 latent (2 stages, channels
             128, 256), Q = 256 by default: the reference's
             `pca_vae_16p_100p.yaml`. Note that at Q = D the layer is the
             identity; pass `q=` (e.g. q=51, 20%) for a real bottleneck.
  spatial4   one PCA per location of a 4x4x256 latent (4 stages, 32..256),
             Q = 180: the reference's `pca_vae.yaml`.
  global     the whole 4x4x256 latent as one vector, mapped to N = 256 by an
             MLP, Q = 256: the reference's `pca_vae_single_vector_100p.yaml`.
  shared     new here: one PCA shared by every location of the 16x16x256
             latent, Q = 64.

Flags: `runlocal` shrinks everything to finish in a few minutes on 2 CPU
cores (32 px, channels 32/64, D = 64, Q = 16, 1500 steps); `res=`, `q=`,
`dataset=` override those keys; `warmup=N` trains as a plain autoencoder for
N steps, then switches the PCA on with its basis from an exact PCA of the
latents (AE warm-up, pcavae/warmup.py; not with `global_dim`).

The PCA's tracker (`config.model.bottleneck.tracker`, PCABottleneck): the
default `sanger` takes Sanger's step divided by each coefficient's variance
at rate `learning_rate` (0.1; any value in (0, 1] is stable, and the step
does not depend on the latent's scale) and re-orthonormalises after every
step by Cholesky-QR (`orthonormalization='qr'`; `symmetric` is the
reference's `C (C^T C)^(-1/2)`, six times the cost at Q = D); `subspace` runs orthogonal iteration
with Rayleigh-Ritz ordering on an EMA of the covariance (L x D x D floats of
state in spatial mode). The `reference` flag selects the OPCA-VAE rule
exactly: the raw Sanger step at the optimizer's learning rate, clipped to
0.1 per location in spatial mode, from a random orthonormal basis. Every
eval logs how close the basis is to an exact PCA of the eval latents
(`pca/captured_variance`, `pca/order_spearman`, ...; pcavae/evaluators.py).

Coefficient quantization at eval (pcavae/bits.py; training is unaffected):
`bits=b` (`coefficient_bits`, 0..16; 32, the default, keeps 32-bit floats)
quantizes every coefficient to b bits, `budget=B` (`coefficient_bit_budget`)
allocates B bits per image over all coefficients by reverse water-filling.
Eval metrics, grids and `pcavae.reconstruct` then come from the quantized
latent, and `pcavae.bits.latent_bits` counts tokens * Q * b, or B.

The default job (`make run`) is

  python -m pcavae.main --config=configs/pcavae.py:runlocal --workdir=workdirs/pcavae_runlocal

which trains `spatial` PCA (8x8x64 latent, Q = 16) on the embedded
`photo_patches` data; docs/pca_tracking.md gives the PSNR/SSIM it reaches.
On CelebA-HQ (an `image_folder` of the 256 px images) the reference setting is

  python -m pcavae.main --config=configs/pcavae.py:setting=spatial16,q=51 \
    --config.dataset.name=image_folder \
    --config.dataset.path=/data/celeba_hq_256 --workdir=workdirs/pca16
"""

from configs import common
from pcavae import configlib

SETTINGS = {
    'spatial16': dict(channels=(128, 256), q=256, mode='spatial'),
    'spatial4': dict(channels=(32, 64, 128, 256), q=180, mode='spatial'),
    'global': dict(channels=(32, 64, 128, 256), q=256, mode='global',
                   global_dim=256),
    'shared': dict(channels=(128, 256), q=64, mode='shared'),
}


def get_config(arg=None):
  """Returns the PCA-VAE config for `arg` (see the module docstring)."""
  a = common.parse_arg(arg, setting='spatial16', runlocal=False, res=0, q=0,
                       dataset='', warmup=0, bits=32, budget=0,
                       reference=False)
  if a.setting not in SETTINGS:
    raise ValueError(f'setting={a.setting!r}; choose one of {list(SETTINGS)}.')
  s = SETTINGS[a.setting]
  c = common.get_base_config()
  c.model.channels = s['channels']
  # Every key at the PCA layer's own default (`configlib.bottleneck_defaults`,
  # from `PCABottleneck`: the `sanger` tracker at rate 0.1, re-orthonormalised
  # by Cholesky-QR after every step, no clip, 32-bit float coefficients at
  # eval); the setting picks Q, the mode and the global map.
  c.model.bottleneck = dict(configlib.bottleneck_defaults('pca'),
                            kind='pca', num_components=s['q'],
                            mode=s['mode'])
  if s.get('global_dim'):
    c.model.bottleneck.global_dim = s['global_dim']
  if a.reference:
    # The OPCA-VAE rule: raw Sanger step at the optimizer's rate, each
    # location's step clipped to 0.1 in spatial mode, random orthonormal
    # initial basis.
    c.model.bottleneck.tracker = 'reference'
    c.model.bottleneck.learning_rate = None
    c.model.bottleneck.orthonormalize_every = None
    c.model.bottleneck.orthonormalization = 'symmetric'
    if s['mode'] == 'spatial':
      c.model.bottleneck.max_update_norm = 0.1
  if a.runlocal:
    common.runlocal(c)
    c.model.bottleneck.num_components = 16
    if s['mode'] == 'global':
      c.model.bottleneck.global_dim = 64
  if a.res:
    c.resolution = a.res
  if a.q:
    c.model.bottleneck.num_components = a.q
  if a.dataset:
    c.dataset.name = a.dataset
  c.model.bottleneck.coefficient_bits = a.bits
  if a.budget:
    c.model.bottleneck.coefficient_bit_budget = a.budget
  return common.warmup(c, a.warmup)
