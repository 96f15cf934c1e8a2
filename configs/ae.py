r"""Plain autoencoder: the identity bottleneck, the no-bottleneck reference.

Bottleneck `identity`: the decoder sees the encoder output unchanged. Every
other family's number is read against this one: it is the best the
encoder/decoder can do with a D-channel latent of 32-bit floats.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/ae.py:runlocal --workdir=workdirs/baselines/ae

Latent bits per image: tokens * D * 32 (runlocal: 64 * 64 * 32 = 131072). At
full size (64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/ae.py --workdir=workdirs/ae
"""

from configs import common


def get_config(arg=None):
  """Returns the ae config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg)
  c = common.get_base_config()
  c.model.bottleneck = dict(kind='identity')
  return common.apply_family_flags(c, a)
