r"""SimVQ (Zhu et al. 2024): a frozen random codebook, a learned linear map.

Bottleneck `simvq`: codes `C W + b` with `C ~ N(0, D^-1/2)` frozen (collection
`simvq`) and W, b learned; lookup, straight-through and loss as `vq`
(beta 0.25), K = 1024; `k=` sets K.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/simvq.py:runlocal --workdir=workdirs/baselines/simvq

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/simvq.py --workdir=workdirs/simvq
"""

from configs import common


def get_config(arg=None):
  """Returns the simvq config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, k=0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='simvq', codebook_size=1024, beta=0.25,
                            legacy_beta=False)
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  return common.apply_family_flags(c, a)
