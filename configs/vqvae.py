r"""VQ-VAE (van den Oord et al. 2017): nearest code, gradient-trained codebook.

Bottleneck `vq`: straight-through `z + sg(e - z)`, loss
`||sg(z) - e||^2 + beta ||z - sg(e)||^2` with beta = 0.25, K = 1024 codes of
dimension D. `legacy` puts beta on the codebook term instead (taming's
default, `legacy=True` there); `k=` sets K.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/vqvae.py:runlocal --workdir=workdirs/baselines/vqvae

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/vqvae.py --workdir=workdirs/vqvae
"""

from configs import common


def get_config(arg=None):
  """Returns the vqvae config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, k=0, legacy=False)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='vq', codebook_size=1024, beta=0.25,
                            legacy_beta=False)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.legacy:
    c.model.bottleneck.legacy_beta = True
  return common.apply_family_flags(c, a)
