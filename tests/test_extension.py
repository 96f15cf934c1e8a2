"""The proof of the bottleneck design: a bottleneck defined in this file.

`ToySignBottleneck` (a sign quantizer with a per-channel scale in its own
collection, set at the AE warm-up switch from the latents; its code is the
binary number of the signs, K = 2^D) is registered from here and runs
through config validation, `bits.latent_bits`, `train.train_and_evaluate`
with the warm-up switch (fixed and adaptive), the code statistics and the
spectra, a resume, and the codec (`.pcav` files), with no file of the
package touched for it.
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
from pcavae import codec as codec_lib
from pcavae import checks
from pcavae import configlib
from pcavae import evaluators
from pcavae import tiling
from pcavae import train
from pcavae import warmup
from pcavae import writers
from pcavae.data import pipeline
from pcavae.models import bottlenecks


@bottlenecks.register('toy_sign')
class ToySignBottleneck(bottlenecks.Bottleneck):
  """`h_hat = sign(h) * scale` per channel (straight-through), one bit per
  channel, `channels` of them; `scale` (collection `toy`) starts at 1 and is
  set to the mean |latent| of each channel at the warm-up switch, never
  below `min_scale`. The code of a location is the binary number of its
  signs.
  """
  channels: int = 8
  min_scale: float = 1e-3

  symbol_key = 'codes'

  def validate(self, latent_shape) -> None:
    checks.positive(self.min_scale, bottlenecks.base.KEY + 'min_scale', float)
    if latent_shape[-1] != self.channels:
      raise ValueError(f'{bottlenecks.base.KEY}channels={self.channels} must '
                       f'equal the latent dimension {latent_shape[-1]}.')

  @property
  def num_codes(self) -> Optional[int]:
    return 2 ** self.channels

  def bits_per_token(self, latent_dim: int) -> float:
    return latent_dim

  def latent_from_symbols(self, symbols, side=None):
    del side
    signs = (symbols[..., None] >> jnp.arange(self.channels)) & 1
    return (2.0 * signs - 1.0) * self.get_variable('toy', 'scale')

  @nn.compact
  def forward(self, h, train: bool) -> Tuple[jax.Array, dict]:
    del train
    scale = self.variable('toy', 'scale',
                          lambda: jnp.ones((h.shape[-1],), jnp.float32))
    z = h.astype(jnp.float32)
    q = jnp.where(z > 0, 1.0, -1.0) * scale.value
    return z + jax.lax.stop_gradient(q - z), {
        'loss': jnp.mean(jnp.square(z - jax.lax.stop_gradient(q))),
        'codes': jnp.sum((z > 0).astype(jnp.int32)
                         << jnp.arange(h.shape[-1]), axis=-1),
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
  c.model.bottleneck = ml_collections.ConfigDict({
      'kind': 'toy_sign', 'warmup_steps': 4, 'warmup_kmeans_batches': 2,
      **bottleneck})
  return c


def test_registry_validation_and_bits():
  assert 'toy_sign' in bottlenecks.names()
  assert 'toy_sign' in bottlenecks.warmup_kinds()
  c = _config()
  configlib.validate(c)
  h, w, d = configlib.latent_shape(c)
  assert bits.latent_bits(c) == h * w * d          # one bit per channel
  assert bits.num_codes(c) == 2 ** d
  c.model.bottleneck.min_scale = -1.0
  with pytest.raises(ValueError, match='config.model.bottleneck.min_scale'):
    configlib.validate(c)
  c.model.bottleneck.colour = 3
  with pytest.raises(ValueError, match='config.model.bottleneck.colour'):
    configlib.validate(c)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """6 steps, the AE warm-up switching at step 4, one eval at the end."""
  full = str(tmp_path_factory.mktemp('toy') / 'full')
  return full, train.train_and_evaluate(_config(), full)


def test_train_warmup_spectra_and_resume(toy_run, tmp_path):
  full, final = toy_run
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


def test_code_statistics(toy_run):
  _, final = toy_run
  tokens = 4 * 4
  k = 2 ** 8
  # The code histogram over the eval split (16 images x 16 locations).
  assert 0 < final['eval/codebook_usage'] <= tokens * 16 / k
  assert 1 <= final['eval/codebook_perplexity'] <= tokens * 16
  assert final['eval/dead_codes'] >= k - tokens * 16
  # One categorical stream: tokens * H(codes), at most tokens * 8 bits.
  assert 0 < final['eval/entropy_bits_per_image'] <= tokens * 8
  assert final['eval/entropy_bits_per_image'] == pytest.approx(
      tokens * math.log2(final['eval/codebook_perplexity']), rel=1e-4)


def test_codec_round_trip(toy_run):
  full, _ = toy_run
  c = codec_lib.Codec(full, batch_size=8, count_images=16)
  image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), np.uint8)
  out = c.compress(image)
  _, symbols = c.decode_symbols(out.data)
  model = train.create_model(c.config)
  tiles, _ = tiling.tile(image, c.tile_size)
  _, aux = model.apply(c.variables, pipeline.to_float(tiles), train=False)
  np.testing.assert_array_equal(symbols, np.asarray(aux['codes']))
  decoded = c.decompress(out.data)
  np.testing.assert_array_equal(decoded, out.reconstruction)
  assert decoded.shape == image.shape
  # The decoder's half (`latent_from_symbols`, reading the toy's own
  # collection) gives the eval path's reconstruction.
  recon, _ = model.apply(c.variables, pipeline.to_float(tiles), train=False)
  _, decode, _ = c.functions(c.rate_kind, c.rate)
  np.testing.assert_allclose(np.asarray(decode(c.variables, symbols)),
                             np.asarray(recon), atol=1e-5)
  # One categorical over the K = 256 codes, fitted to 16 training images.
  assert c.code_counts().shape == (256,)
  assert c.code_counts().sum() == 16 * 16


def test_adaptive_warmup_switches_the_toy(tmp_path):
  c = _config(steps=8, warmup_steps=6, warmup_auto=True,
              warmup_auto_every=1, warmup_auto_patience=2,
              warmup_auto_tolerance=10.0)
  c.eval.spectra_num_images = 0
  configlib.validate(c)
  final = train.train_and_evaluate(c, str(tmp_path))
  records = [r for r in writers.read_metrics(str(tmp_path)) if 'loss' in r]
  switch = [r for r in records if 'warmup/switch_step' in r]
  assert len(switch) == 1
  # Water-filled at log2 K = 8 bits per token; a tolerance of 10 passes as
  # soon as the window is full (patience 2: the third check).
  assert switch[0]['warmup/switch_reason'] == warmup.REASON_CRITERION
  assert switch[0]['warmup/switch_step'] < 6
  assert switch[0]['warmup/toy_scale'] > 0
  assert final['warmup/active'] == 1
