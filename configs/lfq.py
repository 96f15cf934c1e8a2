r"""LFQ (MAGVIT-v2, Yu et al. 2023): lookup-free, binary codes.

Bottleneck `lfq`: each location is mapped to d = 10 channels and each
channel quantized to its sign (straight-through); loss 0.1 * (per-sample
entropy - batch entropy) + 0.25 * commitment. `d=` sets d (at most 16: the
entropy materialises all 2^d codes).

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/lfq.py:runlocal --workdir=workdirs/baselines/lfq

Latent bits per image: tokens * d (runlocal: 64 * 10 = 640). At full size (64
px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/lfq.py --workdir=workdirs/lfq
"""

from configs import common


def get_config(arg=None):
  """Returns the lfq config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, d=0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='lfq', code_dim=10, entropy_weight=0.1,
                            commitment_weight=0.25, inv_temperature=100.0)
  if a.d:
    c.model.bottleneck.code_dim = a.d
  return common.apply_family_flags(c, a)
