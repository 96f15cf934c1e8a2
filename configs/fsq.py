r"""FSQ (Mentzer et al. 2023): finite scalar quantization, no codebook.

Bottleneck `fsq`: each location is mapped to len(levels) channels, bounded
(tanh) and rounded with a straight-through gradient; levels (8, 5, 5, 5)
give 1000 implicit codes (about 2^10, the paper's choice for that size);
`levels=8-8-8-6-5` (dash-separated) picks another set, e.g. the paper's
2^14 one.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/fsq.py:runlocal --workdir=workdirs/baselines/fsq

Latent bits per image: tokens * sum log2(L_i) (runlocal: ceil(64 * 9.97) =
638). At full size (64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/fsq.py --workdir=workdirs/fsq
"""

from configs import common


def get_config(arg=None):
  """Returns the fsq config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, levels='')
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='fsq', levels=(8, 5, 5, 5))
  if a.levels:
    c.model.bottleneck.levels = tuple(int(l) for l in a.levels.split('-'))
  return common.apply_family_flags(c, a)
