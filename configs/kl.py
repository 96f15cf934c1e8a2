r"""KL-VAE (AutoencoderKL, Rombach et al. 2022): a diagonal Gaussian latent.

Bottleneck `kl`: 1x1-conv heads give the mean and log-variance (clamped to
[-30, 20]) of 4 channels per location; training decodes a reparameterised
sample, eval the mean. `kl_weight=1e-6` is latent diffusion's weight in its
units: the KL summed over an image's latent against the reconstruction loss
summed over the image's pixels (the trainer's per-element mean loss is that
sum / (H W 3), so the KL term is divided by H W 3 too:
`config.loss.kl_normalization='ldm'`; 'none' restores the KL term
undivided, H W 3 times stronger, as this config had it before).
`channels=` sets the latent channels, `kl_weight=` the weight.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/kl.py:runlocal --workdir=workdirs/baselines/kl

Latent bits per image: tokens * channels * 32 (runlocal: 64 * 4 * 32 = 8192).
At full size (64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/kl.py --workdir=workdirs/kl
"""

from configs import common


def get_config(arg=None):
  """Returns the kl config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, channels=0, kl_weight=0.0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='kl', latent_channels=4, kl_weight=1e-6)
  c.loss.kl_normalization = 'ldm'   # ldm | none (losses.kl_loss_scale)
  if a.channels:
    c.model.bottleneck.latent_channels = a.channels
  if a.kl_weight:
    c.model.bottleneck.kl_weight = a.kl_weight
  return common.apply_family_flags(c, a)
