"""The bottleneck base class and the name -> class registry.

Every bottleneck is a Flax module called as `bottleneck(h, train, lr=...)` on
an NHWC encoder output and returns `(h_hat, aux)`: `h_hat` has the shape of
`h` and `aux` is a dict of named arrays (`loss`, the bottleneck's own loss
term, always present; `coefficients` or `codes`; statistics). Training may
mutate only non-`params` collections; `train=False` mutates nothing.

`lr` is the optimizer's current learning rate. Only a bottleneck whose own
update follows it (the PCA layer, whose Hebbian rate the reference ties to
the optimizer's) overrides `__call__` to take it; every other one implements
`forward(h, train)`, which the base `__call__` calls.

Each class also owns the facts the rest of the package asks of it, so that a
new bottleneck is one module, one `register` and one config:

  validate(latent_shape)   its constructor arguments, errors naming the key
  latent_bits(shape)       bits per image of its latent (`pcavae.bits`)
  num_codes                K of a discrete latent, else None
  warmup_applies           whether the AE warm-up applies (`pcavae.warmup`)
  per_image_loss           whether its loss is per image (the trainer scales)
  check_warmup(setting)    warm-up settings it cannot take
  warmup_init(...)         its initialisation from encoder latents at the
                           warm-up switch, run through `apply(method=...)`
  symbol_key               the `aux` entry holding what the codec codes
  coding(aux)              how those symbols are coded: its streams, each
                           a selection of an image's symbols with a
                           probability model (`CodingStream`), and what the
                           decoder needs beyond them (`Coding`)
  eval_only_keys           its config keys that change only its eval
  rate_settings, coding_rate(...), rate_overrides(...)
                           the codec's rate settings (`--bits`, `--budget`)
  latent_from_symbols(...) the decoder's half (`pcavae.codec`)
  latent_from_coefficients(y)
                           a continuous latent's eval output from its
                           `aux['coefficients']` (`pcavae.generation`)
  diagnostic_keys, diagnostic_rows(...), diagnostics(...)
                           its own eval diagnostics (`pcavae.evaluators`)
  health(collections)      scalar health of its state, at every eval
  location_sharded()       whether its state splits by latent location
                           (`pcavae.sharding`; it then takes the
                           `sample_sharding` of its samples)
  coefficient_scales(...)  the unit of a coefficient traversal
"""

import dataclasses

import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcavae import analysis
from pcavae import checks
from pcavae.metrics import codebook as codebook_metrics

Array = jax.Array
Aux = Dict[str, Array]
LatentShape = Tuple[int, int, int]   # (h, w, D) of the encoder output

# How config errors name a bottleneck argument.
KEY = 'config.model.bottleneck.'

_REGISTRY: Dict[str, Type['Bottleneck']] = {}

# Probability models of a coding stream.
# One categorical over the stream's `alphabet` symbols, fitted to the code
# counts of the training split (`pcavae.codec`).
CATEGORICAL = 'categorical'
# 0/1 symbols, factorised per bit: one Bernoulli per position of the last
# axis of an image's symbols, each fitted to the training split's counts.
BITS = 'bits'
# A fixed table (`CodingStream.probabilities`), e.g. a quantized Gaussian.
FIXED = 'fixed'
MODELS = (CATEGORICAL, BITS, FIXED)


@dataclasses.dataclass(frozen=True)
class CodingStream:
  """One stream of an image's symbols and its probability model.

  Attributes:
    select: bool, the shape of one image's symbols: the symbols this stream
      codes (in C order).
    model: `CATEGORICAL`, `BITS` or `FIXED`.
    alphabet: the symbols lie in `[0, alphabet)`.
    probabilities: `FIXED` only: the `(alphabet,)` table.
    groups: int, the shape of one image's symbols: at eval, the selected
      symbols of one group share an empirical-entropy histogram (None: one
      group; `BITS` streams group by bit position whatever this says).
  """
  select: np.ndarray
  model: str
  alphabet: int
  probabilities: Optional[np.ndarray] = None
  groups: Optional[np.ndarray] = None

  def group_ids(self) -> np.ndarray:
    """The eval histogram of each symbol of an image (int64, its shape)."""
    if self.model == BITS:
      return np.broadcast_to(np.arange(self.select.shape[-1]),
                             self.select.shape).astype(np.int64)
    if self.groups is None:
      return np.zeros(self.select.shape, np.int64)
    return np.broadcast_to(np.asarray(self.groups, np.int64),
                           self.select.shape)

  def fitted_shape(self) -> Tuple[int, ...]:
    """Shape of the training counts its model is fitted to (`()` for a
    fixed table): `(alphabet,)`, or `(bits, 2)` for `BITS`."""
    if self.model == CATEGORICAL:
      return (int(self.alphabet),)
    if self.model == BITS:
      return (int(self.select.shape[-1]), 2)
    return ()


@dataclasses.dataclass(frozen=True)
class Coding:
  """How one image's symbols (`aux[symbol_key]` of one image) are coded.

  Attributes:
    symbol_shape: the shape of one image's symbols.
    streams: the streams, in file order; together they select every symbol
      that is sent (unselected ones, e.g. 0-bit coefficients, are constant).
    side: what `latent_from_symbols` needs besides the symbols and the
      variables, fixed by the model and rate (None: nothing).
  """
  symbol_shape: Tuple[int, ...]
  streams: Tuple[CodingStream, ...]
  side: Optional[np.ndarray] = None


# The widest binary code (LFQ, BSQ): bit counts and probabilities stay exact
# in float64.
MAX_BIT_CODE_DIM = 64


def bit_coding(bits: Any) -> Coding:
  """The coding of a binary code sent bit by bit (`bits`: a batch of images'
  0/1 symbols): one stream of every bit, factorised, a fitted Bernoulli per
  bit position."""
  shape = tuple(np.shape(bits))[1:]
  return Coding(shape, (CodingStream(np.ones(shape, bool), BITS, 2),))


def check_bit_code_dim(code_dim: int) -> None:
  """`code_dim` bits per location: positive and at most `MAX_BIT_CODE_DIM`,
  naming the key."""
  checks.positive(code_dim, KEY + 'code_dim')
  if code_dim > MAX_BIT_CODE_DIM:
    raise ValueError(f'{KEY}code_dim={code_dim} exceeds '
                     f'{MAX_BIT_CODE_DIM}.')


def register(name: str) -> Callable[[Type['Bottleneck']], Type['Bottleneck']]:
  """Class decorator: makes the class `config.model.bottleneck.kind=name`."""
  def wrap(cls):
    _REGISTRY[name] = cls
    return cls
  return wrap


def get(kind: str) -> Type['Bottleneck']:
  """Returns the bottleneck class registered as `kind`."""
  if kind not in _REGISTRY:
    raise ValueError(
        f'config.model.bottleneck.kind={kind!r} is not a known bottleneck; '
        f'choose one of {sorted(_REGISTRY)}.')
  return _REGISTRY[kind]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def warmup_kinds() -> Tuple[str, ...]:
  """The registered kinds the AE warm-up applies to."""
  return tuple(n for n in names() if _REGISTRY[n].warmup_applies)


class Bottleneck(nn.Module):
  """Base of every bottleneck (module docstring)."""

  # Whether the AE warm-up (train as a plain autoencoder, then switch the
  # bottleneck on) applies: not to a bottleneck that does not quantize.
  warmup_applies: ClassVar[bool] = True
  # The `aux` entry of the eval output that the codec entropy-codes, None
  # for a continuous latent with no finite code.
  symbol_key: ClassVar[Optional[str]] = None
  # Whether `aux['loss']` is per image (summed over the latent, as latent
  # diffusion's KL) rather than in the units of a per-element mean: the
  # trainer then scales it (`train.bottleneck_loss_scale`).
  per_image_loss: ClassVar[bool] = False
  # The codec's rate settings it takes (`coding_rate`), by flag name.
  rate_settings: ClassVar[Tuple[str, ...]] = ()
  # Its config keys that change only its eval (a resumed run may change
  # them: `configlib.differences`).
  eval_only_keys: ClassVar[Tuple[str, ...]] = ()
  # `aux` entries of the eval output that `diagnostics` reads over the
  # spectra's reference set.
  diagnostic_keys: ClassVar[Tuple[str, ...]] = ()

  def __call__(self, h: Array, train: bool, lr: Optional[Array] = None
               ) -> Tuple[Array, Aux]:
    del lr  # Only a bottleneck that overrides `__call__` follows the rate.
    return self.forward(h, train)

  def forward(self, h: Array, train: bool) -> Tuple[Array, Aux]:
    raise NotImplementedError(type(self).__name__)

  # -- facts -----------------------------------------------------------------

  def validate(self, latent_shape: LatentShape) -> None:
    """Raises ValueError naming the first bad argument (`KEY` + name)."""
    del latent_shape

  @property
  def num_codes(self) -> Optional[int]:
    """K, the (implicit) codebook size of a discrete latent, else None."""
    return None

  def num_tokens(self, latent_shape: LatentShape) -> int:
    """Latent locations per image."""
    h, w, _ = latent_shape
    return h * w

  def bits_per_token(self, latent_dim: int) -> float:
    """Bits of one location of the latent as reconstructed at eval."""
    raise NotImplementedError(type(self).__name__)

  def latent_bits(self, latent_shape: LatentShape) -> int:
    """Bits per image of the latent as reconstructed (`pcavae.bits`)."""
    # The epsilon keeps float noise (e.g. 64 * log2(1024)) from rounding up.
    return int(math.ceil(self.num_tokens(latent_shape)
                         * self.bits_per_token(latent_shape[-1]) - 1e-9))

  def check_warmup(self, setting: str) -> None:
    """Raises ValueError if the AE warm-up `setting` (the key as written,
    e.g. `config.model.bottleneck.warmup_steps=5`) cannot apply."""
    del setting

  def warmup_init(self, latents: Array, key: Array, num_batches: int,
                  kmeans_iters: int) -> Aux:
    """Initialises the bottleneck's variables from encoder latents at the
    AE warm-up switch (`put_variable`; run with `mutable=True`).

    Args:
      latents: NHWC encoder outputs of `num_batches` batches, concatenated.
      key: PRNG key (k-means seeding).
      num_batches: how many batches `latents` holds.
      kmeans_iters: Lloyd iterations of a k-means initialisation.

    Returns:
      Scalar statistics (`warmup/...`); this default (a fixed grid, nothing
      to initialise) changes nothing and returns none.
    """
    del latents, key, num_batches, kmeans_iters
    return {}

  def latent_from_symbols(self, symbols: Array,
                          side: Optional[Array] = None) -> Array:
    """The eval output from the symbols `aux[symbol_key]` (the codec's
    decoder) and `Coding.side`: `(B, H, W, D)` (`(B, N)` for a latent that
    is one vector)."""
    raise NotImplementedError(
        f'{type(self).__name__} has no finite code to decode.')

  def latent_from_coefficients(self, coefficients: Array) -> Array:
    """For a continuous latent without a finite code whose eval `aux`
    holds `coefficients`: the eval output made from (changed) coefficients,
    so that they can be quantized and decoded (`pcavae.generation`)."""
    raise NotImplementedError(
        f'{type(self).__name__} does not decode from its coefficients.')

  # -- coding (`pcavae.codec`, the `codes` eval unit) ------------------------

  def coding(self, aux: Dict[str, Any]) -> Coding:
    """How the symbols are coded, from one eval output's `aux` (host
    arrays, batch first). This default: one categorical over `num_codes`
    for every symbol of an image."""
    shape = tuple(np.shape(aux[self.symbol_key]))[1:]
    if self.num_codes is None:
      raise NotImplementedError(
          f'{type(self).__name__}: override `coding` (no `num_codes`).')
    return Coding(shape, (CodingStream(np.ones(shape, bool), CATEGORICAL,
                                       int(self.num_codes)),))

  def coding_rate(self, latent_shape: LatentShape, **given: Optional[int]
                  ) -> Optional[Tuple[str, int]]:
    """`(setting, value)` of `rate_settings` the codec codes at, from the
    settings `given` (flag name -> value or None) or the run's own; None for
    a code of fixed rate. Raises ValueError naming the flag."""
    del latent_shape
    bad = sorted(k for k, v in given.items() if v is not None)
    if bad:
      raise ValueError(
          f'--{"/--".join(bad)}: {type(self).__name__} codes fixed-rate '
          'symbols and takes no rate setting (--budget/--bits are for PCA '
          'models).')
    return None

  def rate_overrides(self, setting: str, value: int) -> Dict[str, Any]:
    """`config.model.bottleneck` keys that make eval code at a rate."""
    raise ValueError(f'{type(self).__name__} takes no rate setting '
                     f'({setting}={value}).')

  # -- eval diagnostics (`pcavae.evaluators`) --------------------------------

  def diagnostic_rows(self, key: str, x: np.ndarray, mask: np.ndarray
                      ) -> np.ndarray:
    """The part of `aux[key]` (one eval batch, host) that belongs to the
    images where `mask` is set; this default: batch first."""
    del key
    return x[mask]

  def diagnostics(self, collections: Dict[str, Any],
                  inputs: Dict[str, List[np.ndarray]]
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, float],
                             Dict[str, float]]:
    """`(spectra, logged, saved)` of its state (`collections`: the model's
    non-params collections, host arrays) and of `inputs`
    (`diagnostic_keys` -> the reference set's rows, one array per batch).
    Spectra are saved and plotted with the others
    (`viz.SPECTRUM_TITLES`); `logged` scalars are logged as named; `saved`
    scalars go into the spectra file, to be read back for
    `diagnostic_figures`. This default: none."""
    del collections, inputs
    return {}, {}, {}

  def diagnostic_figures(self, saved: Dict[str, np.ndarray],
                         num_images: int) -> Dict[str, np.ndarray]:
    """Figures (uint8 images) from its `saved` diagnostics over the evals
    so far (`{'step': (k,), name: (k,)}`, NaN where an eval lacks one)."""
    del saved, num_images
    return {}

  def health(self, collections: Dict[str, Any]) -> Dict[str, float]:
    """Scalar health figures of its state, logged at every eval."""
    del collections
    return {}

  # The hint a non-finite training step names, besides the optimizer's rate.
  nonfinite_hint: ClassVar[Optional[str]] = None
  # The collection of its own state, whose leaves a non-finite check names.
  state_collection: ClassVar[Optional[str]] = None

  # -- traversal (`pcavae.traversal`) ---------------------------------------

  def coefficient_scales(self, latent_hw: Tuple[int, int]) -> Array:
    """For a bottleneck with coefficients (which then takes an eval-only
    `coefficient_shift` in `__call__`, added to them): the scale of each
    coefficient of one image, the unit of a traversal. Run through
    `apply(method=...)` (it reads the bottleneck's state)."""
    raise NotImplementedError(f'{type(self).__name__} has no coefficients.')

  # -- sharding (`pcavae.sharding`) ------------------------------------------

  def location_sharded(self) -> bool:
    """Whether every non-scalar leaf of `state_collection` (and the
    samples it sees) has the latent location first, so that it can split
    over devices by location."""
    return False


# ---------------------------------------------------------------------------
# Helpers of several families.
# ---------------------------------------------------------------------------


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1,
                                               keepdims=True), eps * eps))


def dense(params: Dict[str, Array], x: Array, precision=None) -> Array:
  """Applies a restored `nn.Dense` layer's `kernel`, `bias` as flax does
  (from inside another module's method too: `parent=None` keeps it unbound)."""
  features = params['kernel'].shape[-1]
  return nn.Dense(features, dtype=jnp.float32, precision=precision,
                  parent=None).apply({'params': params}, x)


def project_out(module: 'Bottleneck', q: Array) -> Array:
  """A restored quantizer's output projection `proj_out` applied to its
  quantized codes `q`, where it has one (the decoder's half of the
  projecting scalar quantizers)."""
  if module.has_variable('params', 'proj_out'):
    return dense(module.get_variable('params', 'proj_out'), q)
  return q


def kmeans_codebook(x: Array, k: int, key: Array, iters: int
                    ) -> Tuple[Array, Array, Aux]:
  """`(centres, hits per code, statistics)`: k-means (`analysis.kmeans`)
  of the `(n, d)` lookup vectors `x` into `k` codes."""
  centres, assignment = analysis.kmeans(key, x, k=k, num_iters=iters)
  counts = jax.ops.segment_sum(jnp.ones(assignment.shape, jnp.float32),
                               assignment, num_segments=k)
  err = jnp.mean(jnp.sum(jnp.square(x - centres[assignment]), -1))
  var = jnp.mean(jnp.sum(jnp.square(x - jnp.mean(x, 0)), -1))
  return centres, counts, {
      'warmup/kmeans_samples': jnp.asarray(x.shape[0], jnp.float32),
      'warmup/kmeans_used_codes': jnp.sum(counts > 0).astype(jnp.float32),
      'warmup/kmeans_distortion': err,
      'warmup/kmeans_relative_distortion': err / jnp.maximum(var, 1e-12),
  }


def flat_vectors(latents: Array) -> Array:
  """NHWC latents -> `(n, D)` float32 token vectors."""
  return latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)


def check_optional(check: Callable[..., None], value, name: str, *args
                   ) -> None:
  """`check(value, KEY + name, *args)` unless `value` is None."""
  if value is not None:
    check(value, KEY + name, *args)


def batch_code_stats(codes: Array, num_codes: int) -> Aux:
  hist = codebook_metrics.code_histogram(codes, num_codes)
  return {'codebook_usage': codebook_metrics.usage(hist),
          'perplexity': codebook_metrics.perplexity(hist)}


def straight_through(z: Array, q: Array) -> Array:
  """`z + sg(q - z)`: forward value `q`, gradient of the identity to `z`."""
  return z + jax.lax.stop_gradient(q - z)


def flatten(h: Array) -> Tuple[Array, Tuple[int, ...]]:
  return h.reshape(-1, h.shape[-1]), h.shape[:-1]
