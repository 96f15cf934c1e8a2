"""The proof of the bottleneck design: a bottleneck defined in this file.

`ToySignBottleneck` (a sign quantizer with a per-channel scale in its own
collection, set at the AE warm-up switch from the latents) is registered
from here and runs through config validation, `bits.latent_bits`,
`train.train_and_evaluate` with the warm-up switch and the spectra, and a
resume, with no file of the package touched for it.
"""

import math
import os
import shutil
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from pcavae import bits
from pcavae import checks
from pcavae import configlib
from pcavae import evaluators
from pcavae import train
from pcavae import writers
from pcavae.models import bottlenecks


@bottlenecks.register('toy_sign')
class ToySignBottleneck(bottlenecks.Bottleneck):
  """`h_hat = sign(h) * scale` per channel (straight-through), one bit per
  channel; `scale` (collection `toy`) starts at 1 and is set to the mean
  |latent| of each channel at the warm-up switch, never below `min_scale`.
  """
  min_scale: float = 1e-3

  symbol_key = 'codes'

  def validate(self, latent_shape) -> None:
    checks.positive(self.min_scale, bottlenecks.base.KEY + 'min_scale', float)

  @property
  def num_codes(self) -> Optional[int]:
    return None  # one code per channel, not per location

  def bits_per_token(self, latent_dim: int) -> float:
    return latent_dim

  @nn.compact
  def forward(self, h, train: bool) -> Tuple[jax.Array, dict]:
    del train
    scale = self.variable('toy', 'scale',
                          lambda: jnp.ones((h.shape[-1],), jnp.float32))
    z = h.astype(jnp.float32)
    q = jnp.where(z > 0, 1.0, -1.0) * scale.value
    return z + jax.lax.stop_gradient(q - z), {
        'loss': jnp.mean(jnp.square(z - jax.lax.stop_gradient(q))),
        'codes': (z > 0).astype(jnp.int32),
        'toy_scale': jnp.mean(scale.value)}

  def warmup_init(self, latents, key, num_batches, kmeans_iters):
    del key, num_batches, kmeans_iters
    flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    scale = jnp.maximum(jnp.mean(jnp.abs(flat), axis=0), self.min_scale)
    self.put_variable('toy', 'scale', scale)
    return {'warmup/toy_scale': jnp.mean(scale)}


def _config(steps=6, **bottleneck):
  c = tiny_config('vqvae', num_train_steps=steps, log_every_steps=1,
                  eval_every_steps=100, checkpoint_every_steps=3,
                  **{'eval.lpips': False})
  c.model.bottleneck = ml_collections.ConfigDict(dict(
      kind='toy_sign', warmup_steps=4, warmup_kmeans_batches=2,
      **bottleneck))
  return c


def test_registry_validation_and_bits():
  assert 'toy_sign' in bottlenecks.names()
  assert 'toy_sign' in bottlenecks.warmup_kinds()
  c = _config()
  configlib.validate(c)
  h, w, d = configlib.latent_shape(c)
  assert bits.latent_bits(c) == h * w * d          # one bit per channel
  assert bits.num_codes(c) is None
  c.model.bottleneck.min_scale = -1.0
  with pytest.raises(ValueError, match='config.model.bottleneck.min_scale'):
    configlib.validate(c)
  c.model.bottleneck.colour = 3
  with pytest.raises(ValueError, match='config.model.bottleneck.colour'):
    configlib.validate(c)


def test_train_warmup_spectra_and_resume(tmp_path):
  full = str(tmp_path / 'full')
  final = train.train_and_evaluate(_config(), full)
  records = [r for r in writers.read_metrics(full) if 'loss' in r]
  active = {r['step']: r['bottleneck/quantizer_active'] for r in records}
  assert active == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1}
  switch = [r for r in records if 'warmup/switch_step' in r]
  assert len(switch) == 1 and switch[0]['warmup/switch_step'] == 4
  assert switch[0]['warmup/toy_scale'] > 0
  assert final['warmup/active'] == 1
  assert final['eval/bits_per_image'] == bits.latent_bits(_config())
  # The toy's own collection went through the switch and the checkpoint.
  _, _, variables, _ = train.restore_model(full)
  scale = np.asarray(variables['toy']['bottleneck']['scale'])
  assert not np.allclose(scale, 1.0)
  assert scale.min() >= 1e-3
  # The spectra of the eval.
  for name in ('z_e', 'z_q'):
    assert final[f'spectra/{name}/erank'] > 0
  (step, spectra), = evaluators.load_spectra(full)
  assert step == 6 and 'z_q' in spectra

  # Resumed from the step-3 checkpoint (before the switch), it switches at
  # the same step and ends bit-identical.
  resumed = str(tmp_path / 'resumed')
  os.makedirs(os.path.join(resumed, 'checkpoints'))
  shutil.copytree(os.path.join(full, 'checkpoints', '3'),
                  os.path.join(resumed, 'checkpoints', '3'))
  shutil.copy(os.path.join(full, 'config.json'), resumed)
  train.train_and_evaluate(_config(), resumed)
  records_r = [r for r in writers.read_metrics(resumed) if 'loss' in r]
  assert [r['step'] for r in records_r] == [4, 5, 6]
  a = jax.device_get(train.restore_model(full)[2])
  b = jax.device_get(train.restore_model(resumed)[2])
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert math.isfinite(records_r[-1]['loss'])
