r"""VQGAN-FC (ViT-VQGAN, Yu et al. 2022): factorized, l2-normalised codes.

Bottleneck `vqgan_fc`: a linear map to an 8-dimensional lookup space,
l2-normalised inputs and codes (cosine lookup), K = 1024, `vq` loss on the
normalised vectors, a linear map back to D. Pass `gan` for the VQGAN
objective the method was published with; `k=`, `lookup_dim=` set K and the
lookup dimension.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/vqgan_fc.py:runlocal --workdir=workdirs/baselines/vqgan_fc

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/vqgan_fc.py --workdir=workdirs/vqgan_fc
"""

from configs import common


def get_config(arg=None):
  """Returns the vqgan_fc config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, k=0, lookup_dim=0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='vqgan_fc', codebook_size=1024, lookup_dim=8,
                            beta=0.25, legacy_beta=False)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.lookup_dim:
    c.model.bottleneck.lookup_dim = a.lookup_dim
  return common.apply_family_flags(c, a)
