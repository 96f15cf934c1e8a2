"""AE warm-up: continuous first, discrete later (arXiv 2605.06870).

With `config.model.bottleneck.warmup_steps = N > 0` the model trains as a
plain autoencoder for N steps (the bottleneck's output is replaced by its
input: `Autoencoder(warmup=True)` and its `warmup/active` flag), then the
quantizer switches on. At the switch, before the update of step N:

  1. the encoder (as trained so far) encodes `warmup_kmeans_batches`
     training batches: those of steps N, N+1, ... (a pure function of
     `(seed, step)`, like every batch);
  2. the quantizer initialises itself from those latents: its
     `warmup_init` method (`pcavae.models.bottlenecks`), run through
     `apply(method=...)` on the bottleneck's own variables. The vector
     quantizers write a k-means codebook (greedy k-means++ and
     `warmup_kmeans_iters` Lloyd iterations, `analysis.kmeans`; see
     `bottlenecks/vq.py` for each), FSQ and LFQ have fixed grids and only
     turn the rounding on, the PCA takes an exact PCA of the latents
     (`pca.exact_pca`, per location in `spatial` mode);
  3. the flag is set; parameters and optimizer state of the encoder and
     decoder are kept as they are.

The randomness (k-means++ seeding) comes from `fold_in(fold_in(rng, N),
KMEANS_STREAM)`, so a run resumed from a checkpoint taken before step N
switches at the same step with the same codebook as an uninterrupted one,
and one resumed after it (flag already set) does not switch again.

Note on Adam: a gradient-trained codebook (`vq`, `vqgan_fc`) gets zero
gradients during warm-up, so its Adam moments are ~0 at the switch while
the step count (shared by every parameter) is N; its first updates after
the switch are then larger than a fresh optimizer's (the bias correction
no longer divides by small numbers), up to a few times the learning rate
for the first few hundred steps.

Adaptive switch (`config.model.bottleneck.warmup_auto = True`): the switch
step is decided from what the run measures; `warmup_steps` is then the
latest step at which it may happen (the cap). The criterion comes from the
warm-up paper's theory: an autoencoder learns the directions of its latent
in order of variance, and a quantizer at R = log2 K bits per token (K codes,
the bottleneck's `num_codes`) can only spend bits on the directions that reverse
water-filling at rate R gives a positive rate (`analysis.waterfilling_dim`).
Once the AE has learned those, more warm-up cannot change what the
quantizer will keep. Every `warmup_auto_every` steps (at steps 0, E, 2E, ...
<= the cap, before that step's update) the encoder encodes a fixed probe
set (the first `warmup_kmeans_batches` training batches, the batches of
steps 0, 1, ...), and from the eigenvalues v_1 >= v_2 >= ... of the
covariance of its token vectors z_e the check measures

  k      = analysis.waterfilling_dim(v, R)   the water-filled count
  v_1..k                                      those directions' variances
  share  = (v_1 + ... + v_k) / sum v          their share (logged)

(`auto_history_push`). The switch happens at the first check at which the
last `warmup_auto_patience + 1` checks all have the same k and each of
v_1..v_k moved by at most `warmup_auto_tolerance` in log across them
(`auto_spread`, `auto_criterion_met`); otherwise at the cap. With the
defaults (every 50 steps, patience 3, tolerance 0.05, i.e. 5%) the earliest
switch is at step 150.

Why variances and not shares alone: directions being learned grow
together (in the exponential phase of learning every direction grows at a
similar rate), so scale-free shares can sit still while nothing has been
learned yet; on the synthetic spectra of tests/test_warmup_adaptive.py a
count-and-share test switches before the first direction is half learned,
the variance test after the k-th (and before the tail the quantizer does
not keep). Limits, stated: it is a stationarity test, so a plateau between
the learning of two directions that lasts longer than `patience * every`
steps passes it (choose the window to exceed the plateaus of the model at
hand); a drift of the latent's overall scale (the decoder can undo any) is
read as learning; and Gaussian water-filling on the z_e spectrum is the
theory's model of a quantizer, not a measurement of one.

The criterion's history (the last `patience + 1` checks' k, share and
sorted log-variances, float32, and the number of checks) is part of the
train state (`state['warmup_auto']`, checkpointed with it), and each
decision is made from those stored values, so a run resumed from any
checkpoint before the switch takes the same decisions at the same steps as
an uninterrupted one. Each check's measurements go to the log and into the
next record of `metrics.jsonl` (`warmup/auto_dim`, `warmup/auto_share`,
`warmup/auto_spread`, `warmup/auto_check_step`, ...); the switch writes
`warmup/switch_step` and `warmup/switch_reason` (0: fixed `warmup_steps`,
1: criterion met, 2: cap reached).
"""

import time
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pcavae import analysis
from pcavae import configlib
from pcavae import sharding
from pcavae import train_state
from pcavae.data import pipeline

Array = jax.Array
State = Dict[str, Any]
Variables = Dict[str, Any]

# fold_in constant of the k-means seeding stream (distinct from the step's
# sampling stream `fold_in(rng, step)`).
KMEANS_STREAM = 0x5717C4
COLLECTION = 'warmup'
# Name of the bottleneck submodule in the Autoencoder's variable trees.
MODULE = 'bottleneck'


# Train-state key of the adaptive switch's history (not a model collection).
AUTO_STATE_KEY = 'warmup_auto'
STATE_KEYS = (AUTO_STATE_KEY,)
# `warmup/switch_reason` values.
REASON_FIXED, REASON_CRITERION, REASON_CAP = 0, 1, 2
REASON_NAMES = {REASON_FIXED: 'fixed warmup_steps',
                REASON_CRITERION: 'criterion met',
                REASON_CAP: 'cap warmup_steps reached'}


def quantizer_on(variables: Mapping[str, Any]) -> bool:
  """Whether a model's variables decode a quantized latent: it has no AE
  warm-up, or its warm-up has switched the quantizer on."""
  return COLLECTION not in variables or bool(
      int(np.asarray(variables[COLLECTION]['active'])))


def rate_bits(bottleneck) -> float:
  """R = log2 K bits per token of a quantizer (`Bottleneck.num_codes`)."""
  k = bottleneck.num_codes
  if not k:
    raise ValueError(
        'config.model.bottleneck.warmup_auto needs a quantizer with a '
        f'number of codes, not {type(bottleneck).__name__}.')
  return float(np.log2(k))


# ---------------------------------------------------------------------------
# The adaptive criterion: pure functions (numpy), shared with experiments.
# ---------------------------------------------------------------------------


def waterfilled_directions(variances, rate_bits_per_token: float
                           ) -> Tuple[int, float]:
  """`(k, share)`: how many components reverse water-filling at R bits
  keeps (`analysis.waterfilling_dim`) and their share of the total variance.

  Args:
    variances: `(d,)` eigenvalues of the latent covariance, any order.
    rate_bits_per_token: R = log2 K.

  Returns:
    `k` (0 for an all-zero spectrum) and the sum of the k largest variances
    over the sum of all (0.0 when k = 0).
  """
  lam = np.sort(np.asarray(variances, np.float64).reshape(-1))[::-1]
  total = lam.sum()
  if total <= 0:
    return 0, 0.0
  k = analysis.waterfilling_dim(lam, rate_bits_per_token)
  return k, float(lam[:k].sum() / total)


# Variances below this are treated as this (their log stays finite).
_MIN_VARIANCE = 1e-30


def auto_history_init(patience: int, dim: int) -> Dict[str, np.ndarray]:
  """An empty history of the last `patience + 1` checks (oldest first) of a
  `dim`-dimensional latent."""
  return {'dims': np.full((patience + 1,), -1, np.int32),
          'shares': np.full((patience + 1,), -1.0, np.float32),
          'log_variances': np.zeros((patience + 1, dim), np.float32),
          'num_checks': np.zeros((), np.int32)}


def auto_history_push(history: Mapping[str, Any], variances,
                      rate_bits_per_token: float) -> Dict[str, np.ndarray]:
  """The history with one more check appended (the oldest dropped): the
  check's water-filled count and share (`waterfilled_directions`) and its
  sorted log-variances, all float32/int32 as stored in the train state."""
  lam = np.sort(np.asarray(variances, np.float64).reshape(-1))[::-1]
  dim, share = waterfilled_directions(lam, rate_bits_per_token)
  logs = np.log(np.maximum(lam, _MIN_VARIANCE)).astype(np.float32)

  def push(old, new, dtype):
    old = np.asarray(old, dtype)
    return np.concatenate([old[1:], np.asarray(new, dtype)[None]]).astype(
        dtype)
  return {'dims': push(history['dims'], dim, np.int32),
          'shares': push(history['shares'], share, np.float32),
          'log_variances': push(history['log_variances'], logs, np.float32),
          'num_checks': np.asarray(int(history['num_checks']) + 1, np.int32)}


def auto_spread(history: Mapping[str, Any]) -> float:
  """Largest change, over the filled checks of the history, of the log
  variance of any of the latest check's water-filled directions:
  `max_{j, i <= k} |log v_i(check j) - log v_i(latest)|` (0.05: a 5%
  change). NaN before the first check."""
  n = min(int(history['num_checks']), len(history['dims']))
  if n == 0:
    return float('nan')
  k = int(history['dims'][-1])
  logs = np.asarray(history['log_variances'], np.float64)[-n:, :k]
  if k == 0:
    return 0.0
  return float(np.max(np.abs(logs - logs[-1])))


def auto_criterion_met(history: Mapping[str, Any], tolerance: float) -> bool:
  """True once the history is full, its water-filled counts are all equal
  (and positive), and each of those directions' variances changed by at most
  `tolerance` in log (`auto_spread`) across it."""
  dims = np.asarray(history['dims'])
  if int(history['num_checks']) < len(dims):
    return False
  return bool(dims[0] > 0 and np.all(dims == dims[0])
              and auto_spread(history) <= tolerance)


def init_auto_state(settings: configlib.WarmupSettings, latent_dim: int
                    ) -> Dict[str, Any]:
  """`{AUTO_STATE_KEY: history}` for the initial train state (jnp arrays),
  empty when the switch is not adaptive."""
  if not settings.adaptive:
    return {}
  return {AUTO_STATE_KEY: jax.tree.map(
      jnp.asarray, auto_history_init(settings.auto_patience, latent_dim))}


def _replace(tree: Dict[str, Any], path: Sequence[str], value: Any
             ) -> Dict[str, Any]:
  """A shallow copy of nested dicts `tree` with `tree[path...] = value`."""
  out = dict(tree)
  if len(path) == 1:
    out[path[0]] = value
  else:
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def make_switch_fn(config: ml_collections.ConfigDict, bottleneck=None
                   ) -> Callable[[Variables, Sequence[Array], Array],
                                 Tuple[Variables, Dict[str, Array]]]:
  """`(variables, latent batches, key) -> (variables, stats)`: the switch,
  jittable.

  `variables` are the model's Flax variables (`params` and the collections,
  the bottleneck's under `MODULE`, the flag under `COLLECTION`); `latent
  batches` are NHWC encoder outputs. The returned variables have the
  quantizer initialised from them by its `warmup_init` and the flag set.
  `bottleneck` is the config's (`configlib.make_bottleneck`), built here if
  not given.
  """
  if bottleneck is None:
    bottleneck = configlib.make_bottleneck(config)
  iters = int(configlib.warmup_settings(config).kmeans_iters)

  def switch(variables: Variables, latents: Sequence[Array], key: Array
             ) -> Tuple[Variables, Dict[str, Array]]:
    z = jnp.concatenate(list(latents), axis=0)
    own = {col: tree[MODULE] for col, tree in variables.items()
           if isinstance(tree, Mapping) and MODULE in tree}
    stats, initialised = bottleneck.apply(
        own, z, key, len(latents), iters,
        method=type(bottleneck).warmup_init, mutable=True)
    variables = dict(variables)
    for col, tree in initialised.items():
      variables[col] = _replace(variables.get(col, {}), (MODULE,), tree)
    variables[COLLECTION] = _replace(variables[COLLECTION], ('active',),
                                     jnp.ones((), jnp.int32))
    return variables, stats

  return switch


class Switch:
  """Host side of the switch: collects latents and applies `make_switch_fn`.

  Built by the trainer when `warmup_steps > 0`. The loop calls
  `maybe_switch(state, source, step)` at every step for which `due(step)`,
  before that step's update: with a fixed `warmup_steps` it switches at
  `self.step`; with `warmup_auto` it runs the criterion's check (module
  docstring) and switches when it is met or at the cap `self.step`.
  """

  def __init__(self, model, config: ml_collections.ConfigDict, mesh,
               state_sharding: Any, bottleneck,
               settings: configlib.WarmupSettings):
    self.config = config
    self.mesh = mesh
    self.step = int(settings.steps)   # fixed step, or the cap
    self.num_batches = int(settings.kmeans_batches)
    self.auto = settings.adaptive

    def encode(state: State, images: Array) -> Array:
      return model.apply(train_state.variables_of(state), images,
                         method=lambda m, x: m.encode(x))

    switch_variables = make_switch_fn(config, bottleneck)

    def switch(state: State, latents: Sequence[Array], key: Array):
      variables, stats = switch_variables(train_state.variables_of(state),
                                          latents, key)
      return train_state.with_variables(state, variables), stats

    self._encode = jax.jit(encode)
    self._replicated = sharding.replicated(mesh)
    self._switch = jax.jit(switch,
                           out_shardings=(state_sharding, self._replicated),
                           donate_argnums=(0,))
    if self.auto:
      self.every = int(settings.auto_every)
      self.tolerance = float(settings.auto_tolerance)
      self.rate_bits = rate_bits(bottleneck)
      self._probe = None  # the fixed probe batches, loaded at the first check

  def due(self, step: int) -> bool:
    """Whether the loop must call `maybe_switch` before update `step`."""
    if not self.auto:
      return step == self.step
    return step <= self.step and (step % self.every == 0 or step == self.step)

  def _batches(self, source, start_step: int, num: int):
    cfg = self.config
    ds = pipeline.train_dataset(
        source, global_batch_size=cfg.batch_size, seed=cfg.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    return [sharding.global_batch(ds[i], self.mesh) for i in range(num)]

  def measure(self, state: State, source) -> np.ndarray:
    """Eigenvalues of the covariance of the probe set's z_e token vectors."""
    if self._probe is None:
      self._probe = self._batches(source, 0, self.num_batches)
    z = np.concatenate([sharding.gather(self._encode(state, x))
                        for x in self._probe])
    z = z.reshape(-1, z.shape[-1])
    return np.square(analysis.singular_values(z)) / z.shape[0]

  def check(self, state: State, source, step: int
            ) -> Tuple[State, Dict[str, float], bool]:
    """One check of the criterion: `(state with the history updated, its
    measurements, whether to switch now)`."""
    history = auto_history_push(jax.device_get(state[AUTO_STATE_KEY]),
                                self.measure(state, source), self.rate_bits)
    met = auto_criterion_met(history, self.tolerance)
    state = dict(state)
    state[AUTO_STATE_KEY] = jax.device_put(
        jax.tree.map(jnp.asarray, history), self._replicated)
    stats = {'warmup/auto_check_step': step,
             'warmup/auto_dim': int(history['dims'][-1]),
             'warmup/auto_share': float(history['shares'][-1]),
             'warmup/auto_spread': auto_spread(history),
             'warmup/auto_num_checks': int(history['num_checks']),
             'warmup/auto_rate_bits': self.rate_bits}
    logging.info(
        'AE warm-up check at step %d: %d water-filled directions (R = %.2f '
        'bits) with %.4f of the z_e variance; their log-variances moved by '
        'up to %.4f over the last %d checks (tolerance %g) -> %s.', step,
        stats['warmup/auto_dim'], self.rate_bits, stats['warmup/auto_share'],
        stats['warmup/auto_spread'],
        min(stats['warmup/auto_num_checks'], len(history['dims'])),
        self.tolerance, 'switch' if met else 'continue')
    return state, stats, met

  def maybe_switch(self, state: State, source, step: int
                   ) -> Tuple[State, Dict[str, float]]:
    """Checks (adaptive) and switches when due: `(state, statistics)`;
    statistics hold `warmup/switch_step` when it switched."""
    if not self.auto:
      return self.switch(state, source, step, REASON_FIXED)
    if int(jax.device_get(
        train_state.collections_of(state)[COLLECTION]['active'])):
      return state, {}   # resumed after the switch
    state, stats, met = self.check(state, source, step)
    if met or step == self.step:
      state, switch_stats = self.switch(
          state, source, step, REASON_CRITERION if met else REASON_CAP)
      stats.update(switch_stats)
    return state, stats

  def switch(self, state: State, source, step: int, reason: int
             ) -> Tuple[State, Dict[str, float]]:
    """Switches at `step`: the switched state and scalar statistics."""
    t0 = time.perf_counter()
    latents = tuple(self._encode(state, x)
                    for x in self._batches(source, step, self.num_batches))
    key = jax.random.fold_in(jax.random.fold_in(state['rng'], step),
                             KMEANS_STREAM)
    state, stats = self._switch(state, latents, key)
    out = {k: float(v) for k, v in jax.device_get(stats).items()}
    out['warmup/switch_step'] = step
    out['warmup/switch_reason'] = reason
    out['warmup/switch_seconds'] = time.perf_counter() - t0
    return state, out
