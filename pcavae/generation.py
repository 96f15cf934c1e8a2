"""Generation from a trained autoencoder's latent: a MaskGIT prior over the
symbols its bottleneck sends.

One prior family serves every latent kind, through the bottleneck protocol:

* a finite code (PCA at a rate, the VQ family, FSQ, LFQ, BSQ): the symbols
  the codec codes (`Bottleneck.coding` at the codec's rate, through
  `codec.Codec.functions`): code indices for VQ / FSQ, one symbol per bit
  for LFQ / BSQ (their per-bit streams), and for the PCA the quantized
  coefficients at a bit budget (`--budget`, water-filled) or a depth
  (`--bits`), location by location with the components in variance order,
  each coefficient with its own alphabet `2^b` (0-bit ones are not sent and
  not modelled);
* a continuous latent with coefficients and no finite code (KL): its
  coefficients (the posterior mean) quantized the same way as the PCA's, by
  the MSE-optimal uniform quantizer of a Gaussian (`coding.quantize`), at
  `--bits` per coefficient, each channel centred and scaled by its mean and
  standard deviation over the training images (saved with the prior), and
  decoded through `Bottleneck.latent_from_coefficients`. A diffusion model
  would suit KL better, but then the comparison would be between two prior
  families as much as between two latents; with one prior and one sampler
  the latent is the only difference.

`TokenSpace` turns an image's symbols into the prior's sequence (the sent
symbols in C order) and back. `train_prior` extracts the training images'
sequences once (cached in the prior's folder), trains
`models.prior.MaskedTransformer` on them with orbax checkpoints (resumed
after a crash) and writes `prior.json`: what the prior models, its size in
parameters and FLOPs, and its training and held-out losses. `Prior.load`
and `Prior.sample` decode new sequences with `models.prior.decode` (one
jitted function) and the autoencoder's decoder. Entry points:
`python -m pcavae.train_prior`, `python -m pcavae.sample`.
"""

import dataclasses
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcavae import checkpointing
from pcavae import cli
from pcavae import codec as codec_lib
from pcavae import configlib
from pcavae import data
from pcavae import train
from pcavae.models import bottlenecks
from pcavae.models import coding
from pcavae.models import prior as prior_lib

PRIOR_FILE = 'prior.json'
TOKENS_FILE = 'tokens.npz'
CHECKPOINT_DIR = 'checkpoints'
QUANTIZER_FILE = 'quantizer.npz'

# One prior size for every latent kind (`--size`): transformer width,
# blocks, heads; the study uses one of them for all.
SIZES = {
    'tiny': dict(dim=32, depth=1, heads=1),
    'small': dict(dim=64, depth=2, heads=2),
    'base': dict(dim=256, depth=8, heads=4),
}
# The largest alphabet of one token: a symbol with more (a PCA coefficient
# of more than 12 bits) is split into several tokens (`TokenSpace`).
MAX_ALPHABET = 1 << 12


# ---------------------------------------------------------------------------
# Symbols <-> sequences.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenSpace:
  """The prior's view of one image's symbols.

  The sequence is the sent symbols in C order. A symbol whose alphabet is a
  power of two above `MAX_ALPHABET` (a PCA coefficient of many bits)
  becomes several tokens, its bits split as evenly as possible, most
  significant first; any other alphabet above it is refused.

  Attributes:
    symbol_shape: the shape of one image's symbols (`Coding.symbol_shape`).
    positions: `(L,)` flat (C-order) index of the symbol each token belongs
      to, ascending.
    alphabets: `(L,)` the alphabet of each token.
    shifts: `(L,)` the bit offset of each token within its symbol (0 for a
      symbol that is one token).
  """
  symbol_shape: Tuple[int, ...]
  positions: np.ndarray
  alphabets: np.ndarray
  shifts: Optional[np.ndarray] = None

  @classmethod
  def from_coding(cls, code: bottlenecks.Coding,
                  max_alphabet: Optional[int] = None) -> 'TokenSpace':
    """Every symbol some stream sends, with that stream's alphabet."""
    max_alphabet = MAX_ALPHABET if max_alphabet is None else max_alphabet
    alphabet = np.zeros(code.symbol_shape, np.int64)
    for stream in code.streams:
      sel = np.broadcast_to(np.asarray(stream.select, bool), alphabet.shape)
      if np.any(alphabet[sel]):
        raise ValueError('Two coding streams send the same symbol.')
      alphabet[sel] = int(stream.alphabet)
    return cls.from_alphabets(alphabet, max_alphabet)

  @classmethod
  def from_alphabets(cls, alphabet: np.ndarray, max_alphabet: int
                     ) -> 'TokenSpace':
    """From the alphabet of each symbol of an image (0: not sent)."""
    flat = np.asarray(alphabet, np.int64).reshape(-1)
    positions, alphabets, shifts = [], [], []
    for i in np.flatnonzero(flat):
      a = int(flat[i])
      if a <= max_alphabet:
        positions.append(i), alphabets.append(a), shifts.append(0)
        continue
      bits = a.bit_length() - 1
      if a != 1 << bits:
        raise ValueError(f'An alphabet of {a} symbols exceeds the prior\'s '
                         f'{max_alphabet} and is not a power of two.')
      per = (max_alphabet.bit_length() - 1)
      chunks = -(-bits // per)
      sizes = [bits // chunks + (k < bits % chunks) for k in range(chunks)]
      shift = bits
      for size in sizes:
        shift -= size
        positions.append(i), alphabets.append(1 << size), shifts.append(shift)
    return cls(tuple(int(d) for d in np.shape(alphabet)),
               np.asarray(positions, np.int64),
               np.asarray(alphabets, np.int64),
               np.asarray(shifts, np.int64))

  @property
  def length(self) -> int:
    return int(self.positions.size)

  @property
  def vocab(self) -> int:
    return int(self.alphabets.max())

  @property
  def bits_per_image(self) -> float:
    """Bits of one image's sequence at a fixed length code: sum of
    log2(alphabet)."""
    return float(np.sum(np.log2(self.alphabets)))

  def _shifts(self) -> np.ndarray:
    return (np.zeros_like(self.positions) if self.shifts is None
            else self.shifts)

  def tokens(self, symbols: np.ndarray) -> np.ndarray:
    """`(B, *symbol_shape)` symbols -> `(B, L)` int32 sequences."""
    symbols = np.asarray(symbols, np.int64)
    picked = symbols.reshape(symbols.shape[0], -1)[:, self.positions]
    return ((picked >> self._shifts()) % self.alphabets).astype(np.int32)

  def symbols(self, tokens: np.ndarray) -> np.ndarray:
    """`(B, L)` sequences -> `(B, *symbol_shape)` int32 symbols; the
    symbols no stream sends are 0, as the codec's decoder has them."""
    tokens = np.asarray(tokens, np.int64)
    out = np.zeros((tokens.shape[0], int(np.prod(self.symbol_shape))),
                   np.int64)
    np.add.at(out, (slice(None), self.positions), tokens << self._shifts())
    return out.reshape((tokens.shape[0],) + self.symbol_shape).astype(
        np.int32)

  def check(self, tokens: np.ndarray, what: str) -> None:
    """Raises ValueError unless every token lies in its alphabet."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != self.length:
      raise ValueError(f'{what}: sequences of shape {tokens.shape}, the '
                       f'prior models length {self.length}.')
    bad = (tokens < 0) | (tokens >= self.alphabets[None])
    if np.any(bad):
      raise ValueError(f'{what}: {int(bad.sum())} symbols outside their '
                       'alphabets.')


# ---------------------------------------------------------------------------
# Latents: images <-> symbols.
# ---------------------------------------------------------------------------


class CodedLatent:
  """A finite code: the codec's halves at its rate (`codec.Codec`)."""

  def __init__(self, workdir: str, budget: Optional[int] = None,
               bits: Optional[int] = None, batch_size: int = 64,
               max_alphabet: int = MAX_ALPHABET):
    try:
      self.codec = codec_lib.Codec(workdir, budget=budget, bits=bits,
                                   batch_size=batch_size)
    except codec_lib.CodecError as e:
      raise ValueError(str(e)) from e
    self.config = self.codec.config
    self.variables = self.codec.variables
    self.step = self.codec.step
    self._encode, self._decode, code = self.codec.functions(
        self.codec.rate_kind, self.codec.rate)
    self.space = TokenSpace.from_coding(code, max_alphabet)
    rate = codec_lib.RATE_SETTINGS.get(self.codec.rate_kind)
    self.describe = {'latent': 'code', 'kind': self.codec.kind,
                     'rate_setting': rate,
                     'rate': None if rate is None else int(self.codec.rate)}

  def encode(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._encode(self.variables, jnp.asarray(images)))

  def decode(self, symbols: np.ndarray) -> np.ndarray:
    return np.asarray(self._decode(self.variables, jnp.asarray(symbols)))

  def save(self, directory: str) -> None:
    del directory


def _coefficients(m, x):
  _, aux = m.quantize(m.encode(x).astype(jnp.float32), False)
  return aux['coefficients']


def _decode_coefficients(m, y):
  return m.decode(m.bottleneck.latent_from_coefficients(y))


class QuantizedLatent:
  """A continuous latent's coefficients, each channel quantized by the
  MSE-optimal uniform quantizer of a Gaussian at its training mean and
  standard deviation (module docstring).

  Args:
    workdir: a run whose bottleneck has no finite code and whose eval `aux`
      holds `coefficients` (KL).
    bits: bits per coefficient (1..16).
    batch_size: images per jitted call.
    stats: `{'mean', 'sigma'}` per channel (a saved prior's); None measures
      them on the training images (`measure_statistics`).
  """

  def __init__(self, workdir: str, bits: Optional[int],
               batch_size: int = 64,
               stats: Optional[Dict[str, np.ndarray]] = None,
               max_alphabet: int = MAX_ALPHABET):
    self.config, self.model, self.variables, self.step = train.restore_model(
        workdir)
    kind = self.config.model.bottleneck.kind
    if bits is None or not 1 <= int(bits) <= coding.MAX_COEFFICIENT_BITS:
      raise ValueError(
          f'{workdir}: config.model.bottleneck.kind={kind!r} is a continuous '
          f'latent; give --bits=b (1..{coding.MAX_COEFFICIENT_BITS}) to '
          f'quantize its coefficients (got {bits!r}).')
    self.bits = int(bits)
    self.batch_size = int(batch_size)
    self._coef = jax.jit(lambda v, x: self.model.apply(
        v, x, method=_coefficients))
    self._dec = jax.jit(lambda v, y: self.model.apply(
        v, y, method=_decode_coefficients))
    res = int(self.config.resolution)
    probe = np.zeros((1, res, res, 3), np.float32)
    try:
      shape = np.shape(self._coef(self.variables, probe))[1:]
    except KeyError as e:
      raise ValueError(
          f'{workdir}: config.model.bottleneck.kind={kind!r} has neither a '
          'finite code nor coefficients to quantize; no prior can model '
          'it.') from e
    self.stats = stats
    self.space = TokenSpace.from_alphabets(
        np.full(shape, 2 ** self.bits, np.int64), max_alphabet)
    self.describe = {'latent': 'quantized_coefficients', 'kind': kind,
                     'rate_setting': 'bits', 'rate': self.bits}

  def measure_statistics(self, source, num_images: Optional[int]) -> None:
    """Per-channel mean and standard deviation of the coefficients over the
    first `num_images` images of `source` (float64 sums)."""
    n, s1, s2 = 0, 0.0, 0.0
    for images, mask in data.eval_batches(
        source, global_batch_size=self.batch_size, num_examples=num_images):
      y = np.asarray(self._coef(self.variables, images), np.float64)[mask]
      y = y.reshape(-1, y.shape[-1])
      n, s1, s2 = n + y.shape[0], s1 + y.sum(0), s2 + np.square(y).sum(0)
    mean = s1 / n
    var = np.maximum(s2 / n - np.square(mean), 0.0)
    self.stats = {'mean': mean.astype(np.float32),
                  'sigma': np.sqrt(var).astype(np.float32)}

  def encode(self, images: np.ndarray) -> np.ndarray:
    y = self._coef(self.variables, jnp.asarray(images))
    symbols, _ = coding.quantize(y - self.stats['mean'], self.stats['sigma'],
                                 self.bits)
    return np.asarray(symbols)

  def decode(self, symbols: np.ndarray) -> np.ndarray:
    y = coding.dequantize(jnp.asarray(symbols), self.stats['sigma'],
                          self.bits) + self.stats['mean']
    return np.asarray(self._dec(self.variables, y))

  def save(self, directory: str) -> None:
    tmp = os.path.join(directory, QUANTIZER_FILE + '.tmp.npz')
    np.savez(tmp, bits=self.bits, **self.stats)
    os.replace(tmp, os.path.join(directory, QUANTIZER_FILE))


def make_latent(workdir: str, budget: Optional[int] = None,
                bits: Optional[int] = None, batch_size: int = 64,
                stats: Optional[Dict[str, np.ndarray]] = None,
                max_alphabet: int = MAX_ALPHABET):
  """The latent of a run as symbols: `CodedLatent` for a finite code, else
  `QuantizedLatent`."""
  bottleneck = configlib.make_bottleneck(train.load_config(workdir))
  if bottleneck.symbol_key is not None:
    return CodedLatent(workdir, budget=budget, bits=bits,
                       batch_size=batch_size, max_alphabet=max_alphabet)
  if budget is not None:
    raise ValueError(f'--budget={budget}: {workdir} has a continuous latent; '
                     'give --bits (per coefficient) instead.')
  return QuantizedLatent(workdir, bits, batch_size, stats, max_alphabet)


def encode_split(latent, source, num_images: Optional[int], batch_size: int,
                 label: str) -> np.ndarray:
  """`(N, L)` sequences of the first `num_images` images of `source`."""
  total = len(source) if num_images is None else min(num_images,
                                                     len(source))
  bar = cli.Progress(total, label)
  out, done = [], 0
  for images, mask in data.eval_batches(source, global_batch_size=batch_size,
                                        num_examples=total):
    out.append(latent.space.tokens(latent.encode(images)[mask]))
    done += int(mask.sum())
    bar.update(done)
  return np.concatenate(out)


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PriorSettings:
  """How a prior is trained (`python -m pcavae.train_prior` flags)."""
  size: str = 'small'
  steps: int = 5000
  batch_size: int = 64
  learning_rate: float = 1e-3
  weight_decay: float = 0.05
  warmup_steps: int = 200
  train_images: Optional[int] = None
  eval_images: int = 256
  seed: int = 0
  log_every: int = 100
  checkpoint_every: int = 1000
  max_alphabet: int = MAX_ALPHABET

  def check(self) -> None:
    if self.size not in SIZES:
      raise ValueError(f'--size={self.size!r}: choose one of {list(SIZES)}.')
    for name in ('steps', 'batch_size', 'log_every', 'checkpoint_every',
                 'eval_images', 'max_alphabet'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'--{name}={value!r} must be a positive integer.')
    if self.train_images is not None and self.train_images < 2:
      raise ValueError(f'--train_images={self.train_images} must be >= 2.')
    if not self.learning_rate > 0:
      raise ValueError(f'--learning_rate={self.learning_rate} must be > 0.')


def make_model(space: TokenSpace, size: str) -> prior_lib.MaskedTransformer:
  return prior_lib.MaskedTransformer(vocab=space.vocab, length=space.length,
                                     **SIZES[size])


def size_facts(space: TokenSpace, size: str, params: Any,
               decode_steps: int) -> Dict[str, Any]:
  """Parameters (all, and without the embeddings and the head, which grow
  with the alphabet and length) and FLOPs of the prior."""
  s = SIZES[size]
  outer = ('token_embed', 'pos_embed', 'head')
  body = sum(prior_lib.num_params(v) for k, v in params.items()
             if k not in outer)
  return {'size': size, **s, 'params': prior_lib.num_params(params),
          'params_blocks': int(body), 'length': space.length,
          'vocab': space.vocab,
          'forward_gflops': prior_lib.forward_flops(
              space.length, space.vocab, s['dim'], s['depth']) / 1e9,
          'sample_gflops': prior_lib.sampling_flops(
              space.length, space.vocab, s['dim'], s['depth'],
              decode_steps) / 1e9}


def init_state(model: prior_lib.MaskedTransformer, space: TokenSpace,
               settings: PriorSettings) -> Tuple[Any, Dict[str, Any]]:
  """`(optimizer, initial state)`: AdamW with linear warm-up and cosine
  decay, gradients clipped at norm 1."""
  params = model.init(jax.random.PRNGKey(settings.seed),
                      jnp.zeros((1, space.length), jnp.int32))['params']
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.learning_rate, min(settings.warmup_steps,
                                       settings.steps // 2 + 1),
      settings.steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, b2=0.96,
                               weight_decay=settings.weight_decay))
  return tx, {'params': params, 'opt_state': tx.init(params),
              'step': jnp.zeros((), jnp.int32)}


def _loss_fn(model, alphabets):
  def loss(params, tokens, key):
    hidden = prior_lib.training_mask(key, *tokens.shape)
    inputs = jnp.where(hidden, model.mask_id, tokens)
    logits = model.apply({'params': params}, inputs)
    return prior_lib.masked_loss(logits, tokens, hidden, alphabets)
  return loss


def heldout_loss(model, params, tokens: np.ndarray, alphabets: np.ndarray,
                 batch_size: int, seed: int = 1234, repeats: int = 4
                 ) -> float:
  """Mean masked cross-entropy (bits per hidden symbol) of held-out
  sequences, over `repeats` fixed random masks of each."""
  loss = jax.jit(_loss_fn(model, jnp.asarray(alphabets)))
  total, count = 0.0, 0
  for r in range(repeats):
    for start in range(0, tokens.shape[0], batch_size):
      batch = tokens[start:start + batch_size]
      key = jax.random.fold_in(jax.random.PRNGKey(seed + r), start)
      total += float(loss(params, jnp.asarray(batch), key)) * batch.shape[0]
      count += batch.shape[0]
  return total / max(count, 1) / np.log(2)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(tmp, path)


def _load_tokens(path: str, fingerprint: str) -> Optional[Dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    if str(f['fingerprint']) != fingerprint:
      return None
    return {k: f[k] for k in ('train', 'heldout')}


def train_prior(workdir: str, prior_dir: str, settings: PriorSettings,
                budget: Optional[int] = None, bits: Optional[int] = None,
                decode_steps: int = 12) -> Dict[str, Any]:
  """Trains a prior on a run's latent; returns what `prior.json` holds.

  Resumes from the newest checkpoint in `prior_dir`; the sequences are
  extracted once and cached there (`tokens.npz`).
  """
  settings.check()
  workdir = os.path.abspath(workdir)
  os.makedirs(prior_dir, exist_ok=True)
  latent = make_latent(workdir, budget=budget, bits=bits,
                       max_alphabet=settings.max_alphabet)
  config = latent.config
  splits = data.get_splits(config.dataset, config.resolution)
  if isinstance(latent, QuantizedLatent):
    latent.measure_statistics(splits.train, settings.train_images)
  latent.save(prior_dir)
  space = latent.space
  fingerprint = json.dumps({'workdir': workdir, 'step': latent.step,
                            **latent.describe,
                            'max_alphabet': settings.max_alphabet,
                            'train_images': settings.train_images,
                            'eval_images': settings.eval_images},
                           sort_keys=True)
  tokens_path = os.path.join(prior_dir, TOKENS_FILE)
  cached = _load_tokens(tokens_path, fingerprint)
  if cached is None:
    t0 = time.perf_counter()
    cached = {
        'train': encode_split(latent, splits.train, settings.train_images,
                              latent_batch(config), 'train sequences'),
        'heldout': encode_split(latent, splits.eval, settings.eval_images,
                                latent_batch(config), 'held-out sequences')}
    logging.info('Encoded %d training and %d held-out images in %.1f s.',
                 len(cached['train']), len(cached['heldout']),
                 time.perf_counter() - t0)
    np.savez(tokens_path + '.tmp.npz', fingerprint=fingerprint, **cached)
    os.replace(tokens_path + '.tmp.npz', tokens_path)
  train_tokens = cached['train']
  space.check(train_tokens, tokens_path)

  model, params, losses = fit_prior(
      train_tokens, space, settings, os.path.join(prior_dir, CHECKPOINT_DIR))
  final_loss = (float(np.mean(losses[-settings.log_every:])) / np.log(2)
                if losses else _previous(prior_dir, 'final_loss_bits'))
  n = train_tokens.shape[0]
  record = {
      'workdir': workdir, 'model_step': int(latent.step),
      'model_fingerprint': codec_lib.model_fingerprint(
          config, latent.step).hex(),
      **latent.describe,
      'bits_per_image': space.bits_per_image,
      'prior': size_facts(space, settings.size, params, decode_steps),
      'settings': dataclasses.asdict(settings),
      'decode_steps': int(decode_steps),
      'train_images': int(n),
      'final_loss_bits': final_loss,
      'heldout_loss_bits': heldout_loss(model, params, cached['heldout'],
                                        space.alphabets,
                                        settings.batch_size),
  }
  _write_json(os.path.join(prior_dir, PRIOR_FILE), record)
  return record


def fit_prior(train_tokens: np.ndarray, space: TokenSpace,
              settings: PriorSettings, checkpoint_dir: str
              ) -> Tuple[prior_lib.MaskedTransformer, Any, list]:
  """Trains the prior on `(N, L)` sequences; returns `(model, params,
  losses)` (`losses`: nats per hidden symbol of the steps run here).

  Checkpoints go to `checkpoint_dir` every `settings.checkpoint_every` steps
  and at the end; training resumes from the newest. Step k's batch and mask
  come from `fold_in(PRNGKey(seed), k)`, so a resumed run takes the steps an
  uninterrupted one would.
  """
  model = make_model(space, settings.size)
  alphabets = jnp.asarray(space.alphabets)
  key = jax.random.PRNGKey(settings.seed)
  tx, state = init_state(model, space, settings)
  ckpt = checkpointing.Checkpointer(os.path.abspath(checkpoint_dir), keep=2)
  restored, start = ckpt.restore_latest(checkpointing.abstract(state))
  if restored is not None:
    state = restored
    logging.info('Resuming the prior at step %d.', start)
  loss_fn = _loss_fn(model, alphabets)

  @jax.jit
  def step_fn(state, batch, key):
    loss, grads = jax.value_and_grad(loss_fn)(state['params'], batch, key)
    updates, opt_state = tx.update(grads, state['opt_state'],
                                   state['params'])
    return {'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state, 'step': state['step'] + 1}, loss

  n = train_tokens.shape[0]
  losses = []
  t_log, s_log = time.perf_counter(), start
  for step in range(start, settings.steps):
    k_batch, k_mask = jax.random.split(jax.random.fold_in(key, step))
    idx = np.asarray(jax.random.randint(k_batch, (settings.batch_size,), 0,
                                        n))
    state, loss = step_fn(state, jnp.asarray(train_tokens[idx]), k_mask)
    losses.append(loss)  # read back at the log lines only
    done = step + 1
    if done % settings.log_every == 0 or done == settings.steps:
      now = time.perf_counter()
      rate = (done - s_log) / max(now - t_log, 1e-9)
      window = [float(x) for x in losses[-settings.log_every:]]
      logging.info('prior step %d/%d  loss %.4f bits/symbol  %.1f steps/s  '
                   'ETA %s', done, settings.steps,
                   np.mean(window) / np.log(2), rate,
                   cli.format_eta((settings.steps - done) / max(rate, 1e-9)))
      t_log, s_log = now, done
    if done % settings.checkpoint_every == 0 or done == settings.steps:
      ckpt.save(done, state)
  ckpt.wait()
  ckpt.close()
  return model, state['params'], [float(x) for x in losses]


def _previous(prior_dir: str, key: str) -> Optional[float]:
  """A value of an existing `prior.json` (a finished prior run again)."""
  path = os.path.join(prior_dir, PRIOR_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get(key)


def latent_batch(config) -> int:
  return max(8, int(config.eval.batch_size))


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------


class Prior:
  """A trained prior with its run's latent, ready to sample."""

  def __init__(self, prior_dir: str, workdir: Optional[str] = None):
    path = os.path.join(prior_dir, PRIOR_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} not found: is {prior_dir!r} the --prior of a finished '
          '`python -m pcavae.train_prior` run?')
    with open(path) as f:
      self.record = json.load(f)
    workdir = os.path.abspath(workdir or self.record['workdir'])
    config = train.load_config(workdir)
    if config.model.bottleneck.kind != self.record['kind']:
      raise ValueError(self._other_model(workdir, prior_dir))
    self.describe = {k: self.record[k] for k in ('latent', 'kind',
                                                 'rate_setting', 'rate')}
    rate = {} if self.record['rate_setting'] is None else {
        self.record['rate_setting']: self.record['rate']}
    stats = None
    if self.record['latent'] == 'quantized_coefficients':
      with np.load(os.path.join(prior_dir, QUANTIZER_FILE)) as f:
        stats = {'mean': f['mean'], 'sigma': f['sigma']}
    settings = PriorSettings(**self.record['settings'])
    self.latent = make_latent(workdir, batch_size=latent_batch(config),
                              stats=stats, max_alphabet=settings.max_alphabet,
                              **rate)
    found = codec_lib.model_fingerprint(self.latent.config,
                                        self.latent.step).hex()
    if found != self.record['model_fingerprint']:
      raise ValueError(self._other_model(workdir, prior_dir))
    self.space = self.latent.space
    self.model = make_model(self.space, settings.size)
    _, state = init_state(self.model, self.space, settings)
    ckpt = checkpointing.Checkpointer(
        os.path.abspath(os.path.join(prior_dir, CHECKPOINT_DIR)),
        async_save=False)
    restored, _ = ckpt.restore_latest(checkpointing.abstract(state))
    ckpt.close()
    if restored is None:
      raise FileNotFoundError(f'No prior checkpoint in {ckpt.directory}.')
    self.params = restored['params']
    self._decode_fns: Dict[Tuple[int, int, float, float], Any] = {}

  def _other_model(self, workdir: str, prior_dir: str) -> str:
    return (f'--workdir={workdir} is not the model the prior in {prior_dir} '
            f'was trained on ({self.record["workdir"]}, step '
            f'{self.record["model_step"]}, {self.record["kind"]}).')

  def decode_fn(self, batch: int, steps: int, temperature: float,
                choice_temperature: float):
    """The jitted `(params, key) -> (batch, L)` sequences."""
    key = (batch, steps, temperature, choice_temperature)
    if key not in self._decode_fns:
      alphabets = jnp.asarray(self.space.alphabets)

      def fn(params, rng):
        return prior_lib.decode(
            lambda t: self.model.apply({'params': params}, t), rng, batch,
            alphabets, steps, temperature, choice_temperature,
            mask_id=self.model.mask_id)
      self._decode_fns[key] = jax.jit(fn)
    return self._decode_fns[key]

  def sample(self, num: int, seed: int = 0, steps: Optional[int] = None,
             temperature: float = 1.0, choice_temperature: float = 4.5,
             batch_size: int = 32, progress: bool = True
             ) -> Tuple[np.ndarray, np.ndarray]:
    """`(images (num, H, W, 3) in [-1, 1], sequences (num, L))`; batch k
    uses the key `fold_in(PRNGKey(seed), k)`, so a sample does not depend
    on `num`."""
    steps = int(steps or self.record['decode_steps'])
    fn = self.decode_fn(batch_size, steps, float(temperature),
                        float(choice_temperature))
    bar = cli.Progress(num, 'sample') if progress else None
    images, seqs, done = [], [], 0
    for k in range(-(-num // batch_size)):
      tokens = np.asarray(fn(self.params, jax.random.fold_in(
          jax.random.PRNGKey(seed), k)))
      take = min(batch_size, num - done)
      images.append(self.latent.decode(self.space.symbols(tokens))[:take])
      seqs.append(tokens[:take])
      done += take
      if bar:
        bar.update(done)
    return np.concatenate(images), np.concatenate(seqs)
