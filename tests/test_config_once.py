"""The config is read once per run: one bottleneck built from it, outside
the traced step, and one set of warm-up settings with one default each."""

import ml_collections

from conftest import tiny_config
from pcavae import configlib
from pcavae import train
from pcavae import warmup


def test_a_run_builds_its_bottleneck_once(tmp_path, monkeypatch):
  built = []
  make = configlib.make_bottleneck

  def counting(config):
    built.append(config.model.bottleneck.kind)
    return make(config)

  # The real function, counted: every module reaches it as
  # `configlib.make_bottleneck`.
  monkeypatch.setattr(configlib, 'make_bottleneck', counting)
  config = tiny_config('vqvae', num_train_steps=4, eval_every_steps=2,
                       checkpoint_every_steps=4, log_every_steps=2,
                       **{'eval.lpips': False,
                          'model.bottleneck.codebook_size': 16,
                          'model.bottleneck.warmup_steps': 2,
                          'model.bottleneck.warmup_kmeans_batches': 1})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['warmup/active'] == 1 and final['step'] == 4
  # Once, by `configlib.validate`; the trainer, the train step (traced
  # twice: before and after the switch), the shardings, the evaluator and
  # the warm-up switch all use that one.
  assert built == ['vq']


def test_warmup_settings_have_one_default_each():
  empty = ml_collections.ConfigDict({'model': {'bottleneck': {'kind': 'vq'}}})
  s = configlib.warmup_settings(empty)
  assert s == configlib.WarmupSettings()
  assert (s.steps, s.kmeans_batches, s.kmeans_iters, s.auto, s.auto_every,
          s.auto_patience, s.auto_tolerance) == (
              0, configlib.DEFAULT_KMEANS_BATCHES,
              configlib.DEFAULT_KMEANS_ITERS, False,
              configlib.DEFAULT_AUTO_EVERY, configlib.DEFAULT_AUTO_PATIENCE,
              configlib.DEFAULT_AUTO_TOLERANCE)
  assert not s.enabled and not s.adaptive
  b = empty.model.bottleneck
  b.warmup_steps, b.warmup_auto, b.warmup_auto_patience = 5, True, 4
  s = configlib.warmup_settings(empty)
  assert s.enabled and s.adaptive and s.auto_patience == 4
  history = warmup.init_auto_state(s, latent_dim=3)[warmup.AUTO_STATE_KEY]
  assert history['dims'].shape == (5,)  # patience + 1 checks
  # Every warm-up key of a config is a field of the settings.
  assert {'warmup_' + f for f in configlib.WarmupSettings.__dataclass_fields__
          } == set(configlib.WARMUP_KEYS)
