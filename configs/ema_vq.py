r"""EMA-VQ: a VQ-VAE codebook learned by exponential moving averages.

Bottleneck `ema_vq`: the codebook (collection `vq_ema`) follows EMAs of the
assigned encoder outputs (decay 0.99, Laplace smoothing eps 1e-5); loss is
the commitment term 0.25 ||z - sg(e)||^2 only; K = 1024. `restart=` (e.g.
restart=0.03) turns on dead-code restarts for codes whose EMA hit count is
below it; `k=` sets K.

Shared flags (`runlocal`, `gan`, `res=`, `dataset=`, `warmup=N`): see
`parse_family_arg` in configs/common.py. The comparison run
(`experiments/baselines_runlocal.py` runs every family so; numbers in
docs/baselines.md) is

  python -m pcavae.main --config=configs/ema_vq.py:runlocal --workdir=workdirs/baselines/ema_vq

Latent bits per image: tokens * log2(K) (runlocal: 64 * 10 = 640). At full size
(64 px, a 16x16x256 latent, 100k steps) on a GPU:

  python -m pcavae.main --config=configs/ema_vq.py --workdir=workdirs/ema_vq
"""

from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  """Returns the ema_vq config for `arg` (see the module docstring)."""
  a = common.parse_family_arg(arg, k=0, restart=0.0)
  c = common.get_base_config()
  # dead_code_threshold: None (no restarts) until set, typed so that
  # --config.model.bottleneck.dead_code_threshold=0.03 can set it.
  c.model.bottleneck = dict(
      kind='ema_vq', codebook_size=1024, beta=0.25, decay=0.99, eps=1e-5,
      dead_code_threshold=config_dict.placeholder(float))
  if a.k:
    c.model.bottleneck.codebook_size = a.k
  if a.restart:
    c.model.bottleneck.dead_code_threshold = a.restart
  return common.apply_family_flags(c, a)
