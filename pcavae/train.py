"""Training and evaluation: the one place where mesh, data, checkpoints and
writers meet.

`train_and_evaluate(config, workdir)` validates the config before any
compute, builds a `data` mesh over every device, restores the newest good
checkpoint in `workdir/checkpoints` (or initialises), and runs one jitted,
donated train step per batch. The data iterator is a pure function of
`(seed, step)`, so a resumed run sees exactly the batches an uninterrupted one
would; the per-step rng is `fold_in(rng, step)` for the same reason.

The train state is a plain dict (`pcavae.train_state`): `params`,
`opt_state`, every non-trainable model collection under `collections`,
`step`, `rng` and the non-finite step counters.
"""

import json
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pcavae import checkpointing
from pcavae import cli
from pcavae import configlib
from pcavae import data
from pcavae import evaluators
from pcavae import losses
from pcavae import sharding
from pcavae import train_state
from pcavae import vqgan
from pcavae import warmup
from pcavae import writers
from pcavae.models import autoencoder
from pcavae.models import bottlenecks

State = Dict[str, Any]
CONFIG_FILE = 'config.json'


def create_model(config: ml_collections.ConfigDict,
                 mesh: Optional[jax.sharding.Mesh] = None,
                 bottleneck: Optional[bottlenecks.Bottleneck] = None
                 ) -> autoencoder.Autoencoder:
  """The model of `config`; with the `mesh` it will run on, a
  location-sharded bottleneck (the `spatial` PCA) works on its own
  locations per device (`sharding.location_sharding`, passed as its
  `sample_sharding`;
  the state must then be placed by `sharding.state_shardings(..., config)`)."""
  kwargs = configlib.bottleneck_kwargs(config)
  locations = (sharding.location_sharding(config, mesh, bottleneck)
               if mesh is not None else None)
  if locations is not None:
    kwargs['sample_sharding'] = locations
  return autoencoder.Autoencoder(
      channels=tuple(config.model.channels),
      latent_dim=config.model.latent_dim,
      num_res_layers=config.model.num_res_layers,
      bottleneck_kind=config.model.bottleneck.kind,
      bottleneck_kwargs=kwargs,
      dtype=jnp.dtype(config.compute_dtype),
      warmup=configlib.warmup_settings(config).enabled,
      winograd=uses_winograd(config))


def uses_winograd(config: ml_collections.ConfigDict) -> bool:
  """`config.model.conv_algorithm` resolved: 'auto' is Winograd on the CPU
  backend in float32 (a 1.25x faster train step there, docs/speed.md), the
  direct convolution elsewhere (cuDNN and TPU choose their own algorithms,
  and Winograd's transforms lose more to bfloat16 rounding)."""
  algorithm = config.model.get('conv_algorithm', 'auto')
  if algorithm == 'auto':
    return (jax.default_backend() == 'cpu'
            and config.compute_dtype == 'float32')
  return algorithm == 'winograd'


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate per step; the PCA layer's Hebbian rate follows it when
  tied."""
  o = config.optimizer
  if o.schedule == 'exponential':
    # The reference's ExponentialLR(gamma) stepped once per epoch.
    main = optax.exponential_decay(o.learning_rate, o.transition_steps,
                                   o.decay_rate, staircase=True)
  elif o.schedule == 'cosine':
    main = optax.cosine_decay_schedule(
        o.learning_rate, max(1, config.num_train_steps - o.warmup_steps))
  else:
    main = optax.constant_schedule(o.learning_rate)
  if o.warmup_steps:
    warm = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
    return optax.join_schedules([warm, main], [o.warmup_steps])
  return main


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  o = config.optimizer
  schedule = make_schedule(config)
  parts = []
  if o.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay))
  return optax.chain(*parts), schedule


def make_init_fn(model, tx, config) -> Callable[[jax.Array], State]:
  r = config.resolution

  def init(rng: jax.Array) -> State:
    init_rng, run_rng = jax.random.split(rng)
    x = jnp.zeros((1, r, r, 3), jnp.float32)
    variables = dict(model.init({'params': init_rng, 'sample': init_rng}, x,
                                train=False))
    params = variables.pop('params')
    state = {'params': params, 'opt_state': tx.init(params),
             'step': jnp.zeros((), jnp.int32), 'rng': run_rng,
             'num_nonfinite': jnp.zeros((), jnp.int32),
             'first_nonfinite_step': jnp.full((), -1, jnp.int32),
             'first_nonfinite_what': jnp.full((), -1, jnp.int32),
             train_state.COLLECTIONS: variables}
    if vqgan.enabled(config):
      # fold_in, not a wider split: runs without a GAN keep their init.
      state.update(vqgan.init_state(config, jax.random.fold_in(init_rng, 1)))
    # The adaptive switch's history.
    state.update(warmup.init_auto_state(configlib.warmup_settings(config),
                                        config.model.latent_dim))
    return state
  return init


def initialize(init_fn: Callable[[jax.Array], State], rng: jax.Array,
               shardings: Any) -> State:
  """Runs `init_fn` once, placed by `shardings`.

  The init program runs once per run, so it is compiled without XLA's backend
  optimisations: on CPU that takes 5 s instead of 11 s for the threefry
  sampling of every parameter of the spatial16 model. The values agree with
  the optimised program's to float rounding (7e-7 measured), and every run
  and resume initialises through this same program.
  """
  lowered = jax.jit(init_fn, out_shardings=shardings).lower(rng)
  try:
    compiled = lowered.compile(
        compiler_options={'xla_backend_optimization_level': 0})
  except Exception:  # pylint: disable=broad-except
    compiled = lowered.compile()  # a backend without that option
  return compiled(rng)


def _tree_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


def jit_train_step(model, tx, schedule, config: ml_collections.ConfigDict,
                   mesh, state_sharding,
                   bottleneck: Optional[bottlenecks.Bottleneck] = None):
  """The jitted, state-donating train step with the state's shardings
  pinned on input and output (unpinned, XLA may shard a replicated PCA basis
  on the way out, and the next call then rejects it)."""
  return jax.jit(
      make_train_step(model, tx, schedule, config, bottleneck),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=(0,))


def build_training(config: ml_collections.ConfigDict, mesh, rng: jax.Array,
                   bottleneck: Optional[bottlenecks.Bottleneck] = None
                   ) -> Dict[str, Any]:
  """Model, optimizer, the state's abstract shape and shardings and the
  jitted train step: what `train_and_evaluate` and the benchmarks
  (`experiments/throughput.py`) both build before they have a state.

  The bottleneck's facts come from `bottleneck`, the config's
  (`configlib.make_bottleneck`), built here once if not given.

  Returns:
    A dict with `bottleneck`, `model`, `tx`, `schedule`, `init_fn`,
    `abstract_state`, `state_sharding` and `train_step` (`jit_train_step`'s
    function of `(state, batch)`).
  """
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  model = create_model(config, mesh, bottleneck)
  tx, schedule = make_optimizer(config)
  init_fn = make_init_fn(model, tx, config)
  abstract_state = jax.eval_shape(init_fn, rng)
  state_sharding = sharding.state_shardings(abstract_state, mesh, config,
                                            bottleneck)
  return {'bottleneck': bottleneck, 'model': model, 'tx': tx,
          'schedule': schedule, 'init_fn': init_fn,
          'abstract_state': abstract_state, 'state_sharding': state_sharding,
          'train_step': jit_train_step(model, tx, schedule, config, mesh,
                                       state_sharding, bottleneck)}


def new_training(config: ml_collections.ConfigDict, mesh, rng: jax.Array
                 ) -> Dict[str, Any]:
  """`build_training` and a freshly initialised sharded `state` (no
  checkpoints, data or evaluators: for benchmarks)."""
  built = build_training(config, mesh, rng)
  built['state'] = initialize(built['init_fn'], rng, built['state_sharding'])
  return built


def bottleneck_loss_scale(config: ml_collections.ConfigDict,
                          image_shape: Tuple[int, ...],
                          bottleneck: Optional[bottlenecks.Bottleneck] = None
                          ) -> float:
  """The factor on the bottleneck's `aux['loss']` in the training loss.

  The reconstruction loss is a per-element mean and every bottleneck's loss
  is in the same units as its authors', against a per-element mean too
  (taming, vector-quantize-pytorch, FSQ, LFQ), except a bottleneck whose
  loss is per image (`per_image_loss`: the KL). Latent diffusion weighs its
  per-image KL against a reconstruction loss summed over each image's
  pixels, so it is divided by `H * W * C` (`config.loss.kl_normalization`,
  `losses.kl_loss_scale`). `bottleneck`: the config's, built if not given.
  """
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  if not bottleneck.per_image_loss:
    return 1.0
  return losses.kl_loss_scale(image_shape,
                              config.loss.get('kl_normalization', 'ldm'))


def make_train_step(model, tx, schedule, config,
                    bottleneck: Optional[bottlenecks.Bottleneck] = None
                    ) -> Callable:
  """`(state, batch) -> (state, measurements)`; pure, to be jitted.

  Loss: `reconstruction(recon, batch) + scale * aux['loss']` (mean over
  elements; `scale` from `bottleneck_loss_scale`), or the VQGAN objective's
  (pcavae/vqgan.py) when `config.loss.kind='vqgan'`. `bottleneck_loss` in
  the measurements is the scaled term, as added. `bottleneck`: the
  config's, built here (outside the traced step) if not given.
  """
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  rec_loss_fn = losses.RECONSTRUCTION[losses.reconstruction_name(
      config.loss.reconstruction, config.loss.get('kind', 'reconstruction'))]
  # The VQGAN objective (config.loss.kind='vqgan') replaces the gradient
  # computation and updates the discriminator in the same step.
  gan_grad_fn = (vqgan.make_grad_fn(model, config, rec_loss_fn)
                 if vqgan.enabled(config) else None)

  def train_step(state: State, batch: jax.Array):
    collections = train_state.collections_of(state)
    cols = tuple(collections)
    step = state['step']
    lr = schedule(step)
    rng = jax.random.fold_in(state['rng'], step)

    def loss_fn(params):
      variables = {'params': params, **collections}
      out = model.apply(variables, batch, train=True, lr=lr,
                        mutable=list(cols) if cols else False,
                        rngs={'sample': rng})
      (recon, aux), new_cols = out if cols else (out, {})
      rec = rec_loss_fn(recon, batch)
      aux = dict(aux, loss=scale * aux['loss'])
      loss = rec + aux['loss']
      return loss, (dict(new_cols), aux, rec)

    scale = bottleneck_loss_scale(config, batch.shape,  # static shapes
                                  bottleneck)
    gan_state, gan_measurements = {}, {}
    if gan_grad_fn is None:
      (loss, (new_cols, aux, rec)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state['params'])
    else:
      (loss, new_cols, aux, rec, grads, gan_state,
       gan_measurements) = gan_grad_fn(state, batch, lr, rng, cols,
                                       bottleneck_scale=scale)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    grad_norm = _tree_norm(grads)
    # The new parameters too: finite gradients can still make a non-finite
    # update (an infinite learning rate), which would otherwise be applied
    # and only show in the next step's loss, or be checkpointed in between.
    param_norm = _tree_norm(params)
    checked = jnp.stack([
        loss, rec, aux['loss'], grad_norm, param_norm,
        gan_measurements.get('gan/disc_loss', jnp.zeros(()))]).astype(
            jnp.float32)                              # NONFINITE_ORDER
    # The non-trainable collections first (in `nonfinite_names` order): they
    # are updated inside the forward pass, before the loss, so a diverging
    # PCA basis or codebook is named rather than the loss it poisons.
    bad = jnp.concatenate([
        _nonfinite_leaves({k: new_cols.get(k, collections[k])
                           for k in cols}),
        ~jnp.isfinite(checked)])
    finite = ~jnp.any(bad)

    new_state = dict(state, params=params, opt_state=opt_state, **gan_state)
    new_state[train_state.COLLECTIONS] = {**collections, **new_cols}
    # A non-finite step is not applied (state, PCA included, stays as it was)
    # but is counted; the host decides at log/checkpoint steps whether to stop.
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                             new_state, state)
    new_state['step'] = step + 1
    new_state['num_nonfinite'] = state['num_nonfinite'] + (~finite).astype(
        jnp.int32)
    first = (~finite) & (state['first_nonfinite_step'] < 0)
    new_state['first_nonfinite_step'] = jnp.where(
        first, step, state['first_nonfinite_step'])
    new_state['first_nonfinite_what'] = jnp.where(
        first, jnp.argmax(bad).astype(jnp.int32),
        state['first_nonfinite_what'])

    measurements = {
        'loss': loss, 'reconstruction_loss': rec,
        'bottleneck_loss': aux['loss'], 'grad_norm': grad_norm,
        'param_norm': param_norm, 'learning_rate': lr,
    }
    for k, v in aux.items():
      if k != 'loss' and jnp.ndim(v) == 0:
        measurements[f'bottleneck/{k}'] = v
    measurements.update(gan_measurements)
    return new_state, measurements

  return train_step


# What the train step checks for NaN/Inf, in this order (disc_loss: the
# VQGAN discriminator's hinge loss, 0 without it).
NONFINITE_ORDER = ('loss', 'reconstruction_loss', 'bottleneck_loss',
                   'grad_norm', 'param_norm', 'disc_loss')


def _leaf_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _nonfinite_leaves(collections: Dict[str, Any]) -> jax.Array:
  """`(n,)` bool: whether each leaf of `collections` holds a NaN/Inf."""
  flags = [jnp.any(~jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
           else jnp.zeros((), bool) for x in jax.tree.leaves(collections)]
  return jnp.stack(flags) if flags else jnp.zeros((0,), bool)


def nonfinite_names(state: State) -> Tuple[str, ...]:
  """What `first_nonfinite_what` indexes: every leaf of the non-trainable
  collections (`pca/<module>/basis`, ...), then `NONFINITE_ORDER`."""
  leaves = jax.tree_util.tree_flatten_with_path(collections_of(state))[0]
  return tuple(_leaf_name(p) for p, _ in leaves) + NONFINITE_ORDER


collections_of = train_state.collections_of


def make_reconstruct_fn(model) -> Callable:
  """`(variables, images in [-1, 1]) -> reconstructions`; to be jitted."""

  def reconstruct(variables, images):
    recon, _ = model.apply(variables, images, train=False)
    return recon
  return reconstruct


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class NonFiniteError(FloatingPointError):
  """A train step produced a NaN/Inf loss or gradient."""


def _check_finite(state: State, config,
                  bottleneck: bottlenecks.Bottleneck) -> int:
  """Returns the number of skipped non-finite steps; raises on the first
  one unless `config.skip_nonfinite_steps`, with a one-line message naming
  what went NaN/Inf first: a variable of a non-trainable collection (checked
  first, as it is updated before the loss) or a measurement."""
  n = int(jax.device_get(state['num_nonfinite']))
  if n and not config.get('skip_nonfinite_steps', False):
    first = int(jax.device_get(state['first_nonfinite_step']))
    what = nonfinite_names(state)[
        int(jax.device_get(state['first_nonfinite_what']))]
    stopped = ('The update was not applied and training stopped; the last '
               'good checkpoint is intact.')
    skip = ('or set config.skip_nonfinite_steps=True to skip such steps and '
            'count them.')
    own_rate = bottleneck.nonfinite_hint
    if what in NONFINITE_ORDER:
      hint = 'Lower config.optimizer.learning_rate'
      if own_rate:
        hint += f' (and/or {own_rate})'
      raise NonFiniteError(
          f'Non-finite {what} at step {first} (the first non-finite '
          f'measurement of that step, checked in the order '
          f'{NONFINITE_ORDER}, after every non-trainable variable stayed '
          f'finite). {stopped} {hint}, {skip}')
    hint = (f'Lower {own_rate}' if own_rate and what.startswith(
        f'{bottleneck.state_collection}/') else
            'Check the bottleneck\'s own update keys '
            '(config.model.bottleneck.*, e.g. decay)')
    raise NonFiniteError(
        f'Non-finite variable at step {first}: {what} (non-trainable, updated '
        f'by the bottleneck outside the gradient) went NaN/Inf first, before '
        f'the loss. {stopped} {hint}, {skip}')
  return n


def check_resumable(config: ml_collections.ConfigDict, workdir: str,
                    config_mismatch: str = 'error') -> None:
  """Refuses to resume a workdir that holds a run of a different config.

  Keys in `configlib.RESUMABLE_KEYS` (step counts, log/eval cadence, ...)
  may differ. With `config_mismatch='allow'` the differences are logged, the
  old config is kept as `config.<n>.json`, and training resumes.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  diff = configlib.differences(saved, config)
  if not diff:
    return
  lines = '\n'.join(f'  {k}: {a!r} (saved) -> {b!r} (now)' for k, a, b in diff)
  if config_mismatch != 'allow':
    raise ValueError(
        f'{workdir} holds a run with a different config:\n{lines}\nUse another '
        '--workdir, or pass --config_mismatch=allow to resume it with the new '
        'config anyway.')
  logging.warning('Resuming %s with a changed config (allowed):\n%s', workdir,
                  lines)
  if sharding.is_primary():
    n = 1
    while os.path.exists(os.path.join(workdir, f'config.{n}.json')):
      n += 1
    os.replace(path, os.path.join(workdir, f'config.{n}.json'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       config_mismatch: str = 'error') -> Dict[str, float]:
  """Trains, evaluates and checkpoints in `workdir`; returns the final eval.

  Args:
    config: a config from `configs/` (see configs/common.py for the keys).
    workdir: output directory: `metrics.jsonl`, `checkpoints/`, `images/`,
      `config.json` (and `tensorboard/` when TensorFlow is installed).
    config_mismatch: 'error' (default) refuses to resume a workdir whose
      saved config differs in a key that changes the run; 'allow' resumes.

  Returns:
    The final eval metrics (`eval/psnr`, `eval/ssim`, ...).
  """
  # The config's bottleneck, built once: every fact of it comes from this one.
  bottleneck = configlib.validate(config)
  if config_mismatch not in ('error', 'allow'):
    raise ValueError(f'config_mismatch={config_mismatch!r}: error | allow.')
  check_resumable(config, workdir, config_mismatch)
  mesh = sharding.make_mesh(config)
  n_data = sharding.num_batch_shards(mesh)
  if config.eval.batch_size % n_data:
    raise ValueError(f'config.eval.batch_size={config.eval.batch_size} is not '
                     f'divisible by the {n_data} devices.')
  primary = sharding.is_primary()
  os.makedirs(workdir, exist_ok=True)

  splits = data.get_splits(config.dataset, config.resolution)
  logging.info('Data %s: %d train / %d eval images at %d px.',
               config.dataset.name, len(splits.train), len(splits.eval),
               config.resolution)

  rng = jax.random.PRNGKey(config.seed)
  built = build_training(config, mesh, rng, bottleneck)
  model, init_fn = built['model'], built['init_fn']
  abstract_state = built['abstract_state']
  state_sharding = built['state_sharding']
  train_step = built['train_step']
  # Loads the metric networks now, so a missing weight file fails early.
  evaluator = evaluators.Evaluator(model, config, mesh, workdir, bottleneck)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=config.keep_checkpoints)
  abstract_with_sharding = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)
  state, start_step = restore_latest(ckpt, abstract_with_sharding)
  if state is None:
    state = initialize(init_fn, rng, state_sharding)
    logging.info('Initialised a new run in %s.', workdir)
  else:
    logging.info('Resumed from the checkpoint at step %d in %s.', start_step,
                 workdir)
  own = collections_of(state).get(bottleneck.state_collection, {})
  per_location = [leaf for leaf in jax.tree.leaves(own) if leaf.ndim > 1]
  if bottleneck.location_sharded() and per_location and mesh.size > 1:
    b = per_location[0]
    per_device = b.sharding.shard_shape(b.shape)[0]
    logging.info('%s state on %d devices: %s.', bottleneck.state_collection,
                 mesh.size,
                 f'split by location, {per_device} of {b.shape[0]} each'
                 if per_device < b.shape[0] else 'replicated')

  writer = writers.MetricWriter(workdir, primary=primary,
                                tensorboard=config.get('tensorboard', True))
  writer.truncate_after(start_step)
  if primary:
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(configlib.to_json(config))
    if start_step == 0:
      n_params = sum(x.size for x in jax.tree.leaves(state['params']))
      writer.write_scalars(0, {'num_params': n_params})

  # AE warm-up: a one-off host-side switch at step N, or where the adaptive
  # criterion decides (checks every warmup_auto_every steps; pcavae/warmup.py).
  warmup_settings = configlib.warmup_settings(config)
  switch = (warmup.Switch(model, config, mesh, state_sharding, bottleneck,
                          warmup_settings)
            if warmup_settings.enabled else None)
  # Scalars for the next log record: the warm-up switch's, the first step's
  # latency.
  pending_scalars: Dict[str, float] = {}

  def run_eval(step: int) -> Dict[str, float]:
    results, images = evaluator(state, splits.eval, step)
    for name, value in collections_stats(state, bottleneck).items():
      results[name] = value
    writer.write_scalars(step, results)
    paths = [writer.write_image(step, name, image)
             for name, image in images.items()]
    logging.info('eval step %d: %s (images %s)', step,
                 {k: round(v, 4) for k, v in results.items()}, paths)
    return results

  total = config.num_train_steps
  train_iter = data.train_iterator(
      splits.train, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(),
      workers=config.get('data_workers', 0))

  final: Dict[str, float] = {}
  last_measurements = None
  step = start_step
  t_log, step_log = time.perf_counter(), start_step
  wait_time = 0.0
  with _Preemption() as preempt:
    while step < total:
      if switch is not None and switch.due(step):
        state, stats = switch.maybe_switch(state, splits.train, step)
        # Merged into the next log record (the latest check's values win).
        pending_scalars.update(stats)
        if 'warmup/switch_step' in stats:
          logging.info('AE warm-up: quantizer on at step %d, %s (%s).', step,
                       warmup.REASON_NAMES[stats['warmup/switch_reason']],
                       {k: round(v, 4) for k, v in stats.items()})
          t_log += stats['warmup/switch_seconds']  # not a train step
      t_wait = time.perf_counter()
      batch = sharding.global_batch(next(train_iter), mesh)
      wait_time += time.perf_counter() - t_wait
      state, measurements = train_step(state, batch)
      if step == start_step:
        # The one host sync outside the log steps: the first step's latency
        # (compilation, or loading it from the compilation cache, included).
        jax.block_until_ready(measurements)
        first_step_seconds = time.perf_counter() - t_log
        logging.info('first step done in %.1f s (compilation included)',
                     first_step_seconds)
        pending_scalars['first_step_seconds'] = first_step_seconds
      step += 1
      is_last = step == total

      if step % config.log_every_steps == 0 or is_last:
        last_measurements = jax.device_get(measurements)
        now = time.perf_counter()
        rate = (step - step_log) / max(now - t_log, 1e-9)
        scalars = dict(last_measurements)
        # The switch's are logged with the first record after it, so a run
        # resumed from a checkpoint at step N (which switches again) writes
        # them once.
        scalars.update(pending_scalars)
        pending_scalars = {}
        scalars['steps_per_sec'] = rate
        scalars['images_per_sec'] = rate * config.batch_size
        scalars['input_wait_fraction'] = wait_time / max(now - t_log, 1e-9)
        scalars['num_nonfinite_steps'] = _check_finite(state, config,
                                                       bottleneck)
        writer.write_scalars(step, scalars)
        logging.info('step %d/%d  loss %.5f  %.2f steps/s  ETA %s', step,
                     total, float(last_measurements['loss']), rate,
                     cli.format_eta((total - step) / max(rate, 1e-9)))
        t_log, step_log, wait_time = time.perf_counter(), step, 0.0

      if step % config.eval_every_steps == 0 or is_last:
        final = run_eval(step)

      if (step % config.checkpoint_every_steps == 0 or is_last
          or preempt.signum is not None):
        _check_finite(state, config, bottleneck)
        if ckpt.save(step, state):
          logging.info('Saving checkpoint at step %d to %s.', step,
                       ckpt.directory)
      if preempt.signum is not None:
        ckpt.wait()
        logging.warning('Received signal %d: saved a checkpoint at step %d in '
                        '%s and stopped; start again to resume.',
                        preempt.signum, step, workdir)
        break

  # Stops grain's worker processes (config.data_workers) and frees their
  # shared memory before the evaluation.
  close = getattr(train_iter, 'close', None)
  if close is not None:
    close()
  if not final:
    final = run_eval(step)
  ckpt.close()
  writer.flush()
  writer.close()
  final['step'] = step
  return final


def collections_stats(state: State, bottleneck: bottlenecks.Bottleneck
                      ) -> Dict[str, float]:
  """Scalar health figures of the non-trainable collections (at eval): the
  warm-up flag and the bottleneck's own (`Bottleneck.health`)."""
  out = {}
  collections = collections_of(state)
  if warmup.COLLECTION in collections:
    out['warmup/active'] = int(collections[warmup.COLLECTION]['active'])
  out.update(bottleneck.health(collections))
  return out


def restore_latest(ckpt: checkpointing.Checkpointer, abstract_state: State
                   ) -> Tuple[Optional[State], int]:
  """`ckpt.restore_latest`, also reading checkpoints written before the
  model collections had their own key in the train state
  (`train_state.to_legacy_layout`)."""
  try:
    return ckpt.restore_latest(abstract_state)
  except RuntimeError as error:
    names = tuple(train_state.collections_of(abstract_state))
    try:
      state, step = ckpt.restore_latest(
          train_state.to_legacy_layout(abstract_state))
    except RuntimeError:
      raise error from None
    logging.info('Read the checkpoint of step %d in the earlier state '
                 'layout.', step)
    return train_state.from_legacy_layout(state, names), step


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the --workdir '
                            'of a training run?')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_model(workdir: str):
  """Restores the newest good checkpoint of a run for inference.

  Returns:
    `(config, model, variables, step)`: `variables` is the Flax variables
    dict (`params` and every non-trainable collection) on the default device.
  """
  config = load_config(workdir)
  model = create_model(config)
  tx, _ = make_optimizer(config)
  init_fn = make_init_fn(model, tx, config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'))
  state, step = restore_latest(ckpt, abstract_state)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(
        f'No readable checkpoint in {workdir}/checkpoints.')
  return config, model, train_state.variables_of(state), step
