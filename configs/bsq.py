r"""BSQ (Zhao et al. 2024): binary spherical quantization, no codebook.

Bottleneck `bsq`: each location is projected to d dimensions, normalised to
the unit sphere and quantized to sign/sqrt(d) with a straight-through
gradient; the code is d bits (2^d implicit codes), whose entropy loss,
statistics and coding model are factorised per bit. d = 18 by default;
`d=36` (or any d up to 64) picks another width.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so) is

  python -m pcavae.main --config=configs/bsq.py:runlocal --workdir=workdirs/baselines/bsq

and with 36 bits per location

  python -m pcavae.main --config=configs/bsq.py:runlocal,d=36 --workdir=workdirs/baselines/bsq36

Latent bits per image: tokens * d (runlocal: 64 * 18 = 1152). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/bsq.py --workdir=workdirs/bsq
"""

from configs import common


def get_config(arg=None):
  """Returns the bsq config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, d=0)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='bsq', code_dim=18, entropy_weight=0.1,
                            batch_entropy_weight=1.0, commitment_weight=0.25,
                            inv_temperature=10.0)
  if a.d:
    c.model.bottleneck.code_dim = a.d
  return common.apply_family_flags(c, a)
