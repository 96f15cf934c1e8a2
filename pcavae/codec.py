r"""Images <-> entropy-coded bitstreams (`.pcav` files) of a trained model.

  python -m pcavae.codec compress --workdir=W --input=DIR --output=OUT \
    [--budget=B | --bits=b]
  python -m pcavae.codec decompress --workdir=W --input=OUT --output=DIR2

(console scripts `pcavae-compress` / `pcavae-decompress` run the same).
`compress` writes `OUT/<relative path>.pcav` for every readable image under
DIR; `decompress` writes `DIR2/<relative path>.png` at each image's own size
(`X.jpg.png` where `X.png` would also be another file's). What is read and
how failures are reported is `pcavae.imageio`'s contract, shared with
`pcavae.reconstruct`: any format Pillow opens, EXIF orientation applied, the
first frame of an animation (with a note), skips and failures named on
stderr, a non-zero exit when any file fails or nothing is written.
Both print bits per pixel from the file sizes, per image and in total, and
`compress` the PSNR of what `decompress` will write against the input.

What is coded
-------------
An image of any size is cut into tiles of the run's resolution
(`pcavae.tiling`, reflect-padded at the right and bottom edges). Each tile
goes through the eval path, `model.apply(variables, tile, train=False)`, and
its discrete latent, the bottleneck's `aux[symbol_key]`, is what is sent.
How is the bottleneck's (`Bottleneck.coding`): a list of streams, each a
selection of a tile's symbols with a probability model. Its rate settings
(`Bottleneck.rate_settings`) are the flags `--budget=B` / `--bits=b`:

* PCA: the quantized coefficients' `symbols`
  (`pcavae.models.coding.quantize`), with the bits of each coefficient set
  by `--budget=B` (bits per tile, allocated over the tile's coefficients by
  `coding.allocate_bits`, exactly as
  `config.model.bottleneck.coefficient_bit_budget` does) or `--bits=b`
  (every coefficient; `coefficient_bits`). Without a flag, the run's own
  quantization setting; a run without one is refused.
* VQ, EMA-VQ, SimVQ, VQGAN-FC, FSQ, LFQ: the code index of every location.
* BSQ: the d bits of every location (2^d codes, d up to 64).
* KL and identity have no finite code and are refused.

The decoder maps the symbols back to the quantized latent with the
checkpoint's variables (`latent_from_symbols`) and runs the model's decoder,
so the decompressed pixels are the eval path's quantized reconstruction
(equal up to float rounding: the eval path's straight-through output
`z + (q - z)` is `q` only to within an ulp).

Probability models (fixed before coding, never fitted to the coded image)
-----------------------------------------------------------------------
Each stream is coded with one of three models (`stream_models`):

* fixed table (`FIXED`), e.g. the PCA's quantized Gaussian per coefficient,
  `N(0, sigma_i^2)` with `sigma_i^2` the checkpoint's running coefficient
  variance, integrated over each cell of that coefficient's uniform
  quantizer (outer cells take the tails). Since the quantizer's step is
  `s_b sigma_i` (`coding.gaussian_uniform_step`), the table depends on the
  coefficient's bit depth b only (`coding.gaussian_symbol_probabilities`):
  one stream per b. 0-bit coefficients send nothing.
* categorical (`CATEGORICAL`): one categorical over the K codes, from the
  code frequencies of the first `count_images` (default 2048) images of the
  run's training split in their fixed order, add-1/2 smoothed
  (`bits.smoothed_code_probabilities`: `(n_k + 1/2) / (N + K / 2)`, the
  Krichevsky-Trofimov estimate, so no code has probability 0).
* factorised per bit (`BITS`): one Bernoulli per bit position, each from
  that bit's frequencies in the same training images, add-1/2 smoothed; no
  table over the 2^d codes is ever formed.

The training counts are cached in `W/codec/code_counts_step<step>.npz`
(keyed by the checkpoint step and the model fingerprint; recounted when
either differs).

Coder: `constriction`'s range coder (`stream.queue`, 32-bit words, 24-bit
probability precision, its `Categorical(perfect=False)` models, which give
every symbol of the alphabet a nonzero probability), one stream per image,
tiles in row-major order.

File format (version 1, little-endian)
--------------------------------------
A 36-byte header, then the range coder's 32-bit words:

  magic b'PCAV' | version u8 | rate kind u8 (0 codes, 1 bits, 2 budget) |
  model fingerprint 8 bytes | height u32 | width u32 | tile size u16 |
  rate u32 (bits per coefficient or per tile; 0 for codes) |
  payload words u32 | CRC-32 of the header's other bytes and the payload u32

The fingerprint is the first 8 bytes of SHA-256 over the run's config
(`configlib.to_json`) and checkpoint step. Decompressing with another
model's workdir, a truncated or a corrupt file (CRC mismatch) raises
`CodecError` naming the file; the command line prints it on one line and
writes no image for that file.

Every file is decoded as if hostile, so that what a header claims cannot
cost more than the image it really holds:

* the file's size must be the header's before its payload is read;
* the image may have at most `--max_pixels` pixels (default 8192 x 8192),
  checked before anything is allocated;
* the payload's length must lie within what the header's tile count and
  rate can give (`payload_word_bounds`), so a short file cannot claim a
  large image;
* the payload must be exactly the range coder's output for the symbols it
  decodes to (re-encoded and compared), so the decoder ends at its end.

The fuzz test (`tests/test_codec_fuzz.py`) and an atheris harness
(`tests/fuzz_codec.py`) check that nothing but `CodecError` comes out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import struct
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from pcavae import bits
from pcavae import cli
from pcavae import configlib
from pcavae import imageio
from pcavae.models import bottlenecks

FORMAT_VERSION = 1
MAGIC = b'PCAV'
SUFFIX = '.pcav'
RATE_CODES, RATE_BITS, RATE_BUDGET = 0, 1, 2
DEFAULT_COUNT_IMAGES = 2048
# The largest image a file may claim (and compress accepts) unless
# --max_pixels says otherwise: 8192 x 8192, beyond any camera a user would
# plausibly compress, and small enough that decoding it fits in a few GB.
DEFAULT_MAX_PIXELS = 8192 * 8192
# constriction's `Categorical(perfect=False)` quantizes probabilities to
# 24 bits, so no symbol costs more than 24 bits and each probability moves
# by at most a few units of 2^-24.
_PROBABILITY_BITS = 24
# The range coder's flush and the slack of its finite precision: what a
# payload may differ by from the information content of its symbols.
_FLUSH_BITS = 64
_PRECISION_SLACK = 1e-3
CODE_COUNTS_DIR = 'codec'

_HEADER = struct.Struct('<4sBB8sIIHIII')
HEADER_BYTES = _HEADER.size


class CodecError(ValueError):
  """A one-line, user-facing reason why a file or model cannot be coded."""


# ---------------------------------------------------------------------------
# Header.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Header:
  """The fixed-size header of a `.pcav` file (module docstring)."""
  fingerprint: bytes
  height: int
  width: int
  tile_size: int
  rate_kind: int
  rate: int
  payload_words: int
  version: int = FORMAT_VERSION


def pack_file(header: Header, words: np.ndarray) -> bytes:
  """Header + payload bytes; the CRC covers both."""
  payload = np.asarray(words, '<u4').tobytes()
  head = _HEADER.pack(MAGIC, header.version, header.rate_kind,
                      header.fingerprint, header.height, header.width,
                      header.tile_size, header.rate, header.payload_words,
                      0)[:-4]
  return head + struct.pack('<I', zlib.crc32(head + payload)) + payload


def unpack_header(head: bytes, path: str) -> Tuple[Header, int]:
  """Parses the fixed-size header alone, so that a file's size can be
  checked against it before the payload is read.

  Args:
    head: at least the file's first `HEADER_BYTES` bytes.
    path: the file's name, for the error messages.

  Returns:
    `(header, its CRC-32)`.

  Raises:
    CodecError: shorter than a header, not a `.pcav` file, another format
      version, or fields no encoder writes (unknown rate kind, an empty
      image or tile).
  """
  if len(head) < HEADER_BYTES:
    raise CodecError(f'{path}: truncated ({len(head)} bytes, shorter than '
                     f'the {HEADER_BYTES}-byte header).')
  (magic, version, rate_kind, fp, height, width, tile_size, rate, words,
   crc) = _HEADER.unpack_from(head)
  if magic != MAGIC:
    raise CodecError(f'{path}: not a .pcav file (magic {magic!r}).')
  if version != FORMAT_VERSION:
    raise CodecError(f'{path}: format version {version}; this decoder reads '
                     f'version {FORMAT_VERSION}.')
  header = Header(fp, height, width, tile_size, rate_kind, rate, words,
                  version)
  return header, crc


def file_bytes(header: Header) -> int:
  """The size in bytes of a file with this header."""
  return HEADER_BYTES + 4 * header.payload_words


def unpack_file(data: bytes, path: str, fingerprint: Optional[bytes] = None
                ) -> Tuple[Header, np.ndarray]:
  """Parses and checks a `.pcav` file's bytes.

  Args:
    data: the whole file.
    path: its name, for the error messages.
    fingerprint: the decoding model's; a different one is an error.

  Returns:
    `(header, payload words as uint32)`.

  Raises:
    CodecError: not a `.pcav` file, another format version, another model,
      truncated (or trailing bytes), or corrupt (CRC mismatch).
  """
  header, crc = unpack_header(data, path)
  expected = file_bytes(header)
  if len(data) != expected:
    raise CodecError(f'{path}: truncated, padded or a corrupt header '
                     f'({len(data)} bytes, the header says {expected}).')
  payload = data[HEADER_BYTES:]
  if zlib.crc32(data[:HEADER_BYTES - 4] + payload) != crc:
    raise CodecError(f'{path}: corrupt (CRC-32 mismatch).')
  if fingerprint is not None and header.fingerprint != fingerprint:
    raise CodecError(f'{path}: written by another model (fingerprint '
                     f'{header.fingerprint.hex()}, this workdir is '
                     f'{fingerprint.hex()}).')
  if (header.rate_kind not in (RATE_CODES, RATE_BITS, RATE_BUDGET)
      or not header.height or not header.width or not header.tile_size):
    raise CodecError(f'{path}: invalid header (rate kind {header.rate_kind}, '
                     f'{header.width}x{header.height}, tile '
                     f'{header.tile_size}).')
  return header, np.frombuffer(payload, '<u4').astype(np.uint32)


def check_pixels(height: int, width: int, max_pixels: int, path: str) -> None:
  """Raises CodecError naming `path` when `height * width` exceeds
  `max_pixels` (the `--max_pixels` flag)."""
  if height * width > max_pixels:
    raise CodecError(
        f'{path}: {width}x{height} is {height * width:,} pixels, over the '
        f'limit of {max_pixels:,} (--max_pixels).')


def model_fingerprint(config: Any, step: int) -> bytes:
  """8 bytes of SHA-256 over the run's config and checkpoint step."""
  text = configlib.to_json(config) + f'\nstep={int(step)}'
  return hashlib.sha256(text.encode()).digest()[:8]


# ---------------------------------------------------------------------------
# Entropy coding.
# ---------------------------------------------------------------------------


def _categorical(probabilities: np.ndarray):
  import constriction  # pylint: disable=g-import-not-at-top
  return constriction.stream.model.Categorical(
      np.asarray(probabilities, np.float64), perfect=False)


def encode_streams(streams: Sequence[Tuple[np.ndarray, np.ndarray]]
                   ) -> Tuple[np.ndarray, int]:
  """Range-codes `(symbols, probabilities)` streams, in order, into one
  array of uint32 words (`constriction.stream.queue.RangeEncoder`).

  Returns:
    `(words, bits)`: the words and the coder's own count of bits.
  """
  import constriction  # pylint: disable=g-import-not-at-top
  encoder = constriction.stream.queue.RangeEncoder()
  for symbols, probabilities in streams:
    symbols = np.asarray(symbols, np.int32).reshape(-1)
    if symbols.size:
      encoder.encode(symbols, _categorical(probabilities))
  num_bits = int(encoder.num_bits())
  return np.asarray(encoder.get_compressed(), np.uint32), num_bits


def payload_word_bounds(streams: Sequence[Tuple[int, np.ndarray]]
                        ) -> Tuple[int, int]:
  """The fewest and most 32-bit words `encode_streams` can write for
  `(count, probabilities)` streams, whatever the symbols.

  Each symbol costs between `-log2` of its model's largest and smallest
  probability (as the coder quantizes them to 24 bits); the coder adds at
  most a flush and a little precision slack on top.
  """
  slack = 2.0 ** -_PROBABILITY_BITS
  low = high = 0.0
  for count, probabilities in streams:
    p = np.asarray(probabilities, np.float64)
    if not count or not p.size:
      continue
    moved = p.size * slack  # how far quantization may move one probability
    low += count * -np.log2(min(1.0, float(p.max()) + moved))
    high += count * min(float(_PROBABILITY_BITS),
                        -np.log2(max(float(p.min()) - moved, slack)))
  low = low * (1 - _PRECISION_SLACK) - _FLUSH_BITS
  high = high * (1 + _PRECISION_SLACK) + _FLUSH_BITS
  return max(0, int(np.floor(low / 32))), int(np.ceil(high / 32))


def decode_streams(words: np.ndarray,
                   streams: Sequence[Tuple[int, np.ndarray]]
                   ) -> List[np.ndarray]:
  """Inverse of `encode_streams`: `(count, probabilities)` per stream.

  Raises:
    CodecError: the payload is not exactly what `encode_streams` writes for
      the symbols it decodes to: too short (the decoder ran past its end),
      trailing words, or bits no encoder emits. Re-encoding the symbols and
      comparing is the one check that covers all three, and it costs no
      more than the decoding did.
  """
  import constriction  # pylint: disable=g-import-not-at-top
  words = np.asarray(words, np.uint32)
  decoder = constriction.stream.queue.RangeDecoder(words)
  out = []
  for count, probabilities in streams:
    if count:
      out.append(np.asarray(decoder.decode(_categorical(probabilities),
                                           int(count)), np.int32))
    else:
      out.append(np.zeros((0,), np.int32))
  again, _ = encode_streams([(values, p) for values, (_, p)
                             in zip(out, streams)])
  if not np.array_equal(again, words):
    raise CodecError(
        f'the payload does not end where its symbols do ({words.size} words; '
        f'its {sum(n for n, _ in streams):,} symbols take {again.size}).')
  return out


# ---------------------------------------------------------------------------
# A model as a codec.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Compressed:
  """One compressed image: the file's bytes and what decoding will give."""
  data: bytes
  reconstruction: np.ndarray  # uint8 (H, W, 3), what decompress writes
  num_tiles: int
  payload_bits: int  # the range coder's own count (32 per word)


# The header's rate kind of each rate setting (`Bottleneck.rate_settings`).
RATE_KINDS = {'bits': RATE_BITS, 'budget': RATE_BUDGET}
RATE_SETTINGS = {v: k for k, v in RATE_KINDS.items()}


def stream_models(coding: bottlenecks.Coding, counts: Optional[np.ndarray]
                  ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """The coded streams of a `Coding`, in file order: `(mask over one
  image's symbols, probabilities)`, each coded with one categorical.

  A `CATEGORICAL` stream is its KT-smoothed training counts
  (`bits.smoothed_code_probabilities`), a `FIXED` one its table, and a
  `BITS` stream one smoothed Bernoulli per bit position (the last axis), so
  no model ever has more than `alphabet` entries however many codes the
  bits make.

  Args:
    coding: the bottleneck's `coding`.
    counts: the training counts of its fitted streams, concatenated
      (`count_symbols`); None if it has none.
  """
  out, offset = [], 0
  for stream in coding.streams:
    size = int(np.prod(stream.fitted_shape())) if stream.fitted_shape() else 0
    fitted = (None if not size else
              np.asarray(counts[offset:offset + size]).reshape(
                  stream.fitted_shape()))
    offset += size
    if stream.model == bottlenecks.FIXED:
      out.append((stream.select, np.asarray(stream.probabilities)))
    elif stream.model == bottlenecks.CATEGORICAL:
      out.append((stream.select, bits.smoothed_code_probabilities(fitted)))
    else:
      position = stream.group_ids()
      for i in range(fitted.shape[0]):
        out.append((stream.select & (position == i),
                    bits.smoothed_code_probabilities(fitted[i])))
  return out


def num_fitted(coding: bottlenecks.Coding) -> int:
  """How many training counts the fitted streams of `coding` take."""
  return sum(int(np.prod(s.fitted_shape())) for s in coding.streams
             if s.fitted_shape())


def count_symbols(coding: bottlenecks.Coding, symbols: np.ndarray
                  ) -> np.ndarray:
  """The counts its fitted streams are fitted to, of `symbols` `(n,) +
  coding.symbol_shape`, concatenated in stream order: a histogram of the
  `alphabet` symbols per `CATEGORICAL` stream, `(zeros, ones)` per bit
  position per `BITS` stream."""
  symbols = np.asarray(symbols, np.int64).reshape(
      (-1,) + tuple(coding.symbol_shape))
  out = []
  for stream in coding.streams:
    if stream.model == bottlenecks.CATEGORICAL:
      out.append(np.bincount(symbols[:, stream.select].reshape(-1),
                             minlength=stream.alphabet)[:stream.alphabet])
    elif stream.model == bottlenecks.BITS:
      d = stream.fitted_shape()[0]
      position = stream.group_ids()[stream.select]
      ones = np.bincount(position, weights=symbols[:, stream.select].sum(0),
                         minlength=d)
      total = np.bincount(position, minlength=d) * symbols.shape[0]
      out.append(np.stack([total - ones, ones], -1).reshape(-1))
  return (np.concatenate(out).astype(np.int64) if out
          else np.zeros((0,), np.int64))


class Codec:
  """A restored model with its entropy models: images <-> `.pcav` bytes.

  What is coded and how is the bottleneck's (`Bottleneck.coding`); its rate
  settings (`rate_settings`, e.g. the PCA's `budget` and `bits`) come from
  the flags or the run's own config (`coding_rate`).

  Args:
    workdir: a training run's directory.
    budget: bits per tile, for a bottleneck with a `budget` rate setting.
    bits: bits per coefficient, for one with a `bits` rate setting.
    batch_size: tiles per jitted call.
    count_images: training images whose symbols fit the fitted models;
      None takes this checkpoint's cached counts whatever their number (else
      counts `DEFAULT_COUNT_IMAGES`). The fingerprint covers the counts, so
      a file decodes only with the frequencies it was coded with.
    for_decoding: rates come from each file's header; none is needed here.
    max_pixels: the largest image compressed or decoded; a file whose
      header claims more is refused before anything is allocated.

  Raises:
    CodecError: a continuous latent, a quantizer not yet switched on (AE
      warm-up), a flag the model cannot use, or a run without a rate.
  """

  def __init__(self, workdir: str, budget: Optional[int] = None,
               bits: Optional[int] = None, batch_size: int = 32,
               count_images: Optional[int] = None,
               for_decoding: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    from pcavae import train  # pylint: disable=g-import-not-at-top
    from pcavae import warmup  # pylint: disable=g-import-not-at-top
    if int(batch_size) < 1:
      raise CodecError(f'--batch_size={batch_size} must be positive.')
    if int(max_pixels) < 1:
      raise CodecError(f'--max_pixels={max_pixels} must be positive.')
    self.workdir = workdir
    self.max_pixels = int(max_pixels)
    config = train.load_config(workdir)
    kind = config.model.bottleneck.kind
    self.bottleneck = configlib.make_bottleneck(config)
    self.symbol_key = self.bottleneck.symbol_key
    if self.symbol_key is None:
      raise CodecError(
          f'config.model.bottleneck.kind={kind!r} in {workdir}: a continuous '
          'latent has no finite code to entropy-code; use a PCA (with '
          '--budget or --bits), VQ-family, FSQ, LFQ or BSQ run.')
    self.config, self.model, self.variables, self.step = train.restore_model(
        workdir)
    self.kind = kind
    self.latent_shape = configlib.latent_shape(self.config)
    self.model_fingerprint = model_fingerprint(self.config, self.step)
    self.tile_size = int(self.config.resolution)
    self.batch_size = int(batch_size)
    self.count_images = count_images
    if not warmup.quantizer_on(self.variables):
      raise CodecError(
          f'{workdir} (step {self.step}): the AE warm-up has not switched the '
          'quantizer on yet, so the model decodes a continuous latent.')
    if for_decoding:
      if budget is not None or bits is not None:
        raise CodecError('decompress reads the rate from each file; it takes '
                         'no --budget/--bits.')
      self.rate_kind, self.rate = None, None
    else:
      self.rate_kind, self.rate = self._rate(budget=budget, bits=bits)
    self._fns: Dict[Tuple[int, int], Any] = {}
    self._code_counts: Optional[np.ndarray] = None

  @property
  def fingerprint(self) -> bytes:
    """What a file must carry to decode with this codec: the model's
    fingerprint, and with fitted models also their training counts."""
    if not self._fitted():
      return self.model_fingerprint
    return hashlib.sha256(self.model_fingerprint + np.asarray(
        self.code_counts(), '<i8').tobytes()).digest()[:8]

  def _fitted(self) -> bool:
    """Whether the models are fitted to training counts (a fixed-rate
    code; a bottleneck with rate settings codes with fixed tables)."""
    return (not self.bottleneck.rate_settings
            and num_fitted(self.coding(RATE_CODES, 0)) > 0)

  # -- rate ------------------------------------------------------------------

  def _rate(self, **given: Optional[int]) -> Tuple[int, int]:
    """`(header rate kind, rate)` from the rate settings `given`."""
    try:
      rate = self.bottleneck.coding_rate(self.latent_shape, **given)
    except ValueError as e:
      raise CodecError(f'{self.workdir}: {e}') from e
    if rate is None:
      return RATE_CODES, 0
    setting, value = rate
    return RATE_KINDS[setting], int(value)

  def _rate_config(self, rate_kind: int, rate: int):
    """The run's config with the eval quantization of a rate."""
    config = self.config.copy_and_resolve_references()
    if rate_kind == RATE_CODES:
      return config
    overrides = self.bottleneck.rate_overrides(RATE_SETTINGS[rate_kind], rate)
    with config.model.bottleneck.unlocked():
      config.model.bottleneck.update(overrides)
    return config

  # -- jitted halves ---------------------------------------------------------

  def functions(self, rate_kind: int, rate: int):
    """`(encode, decode, coding)` for a rate, compiled once each.

    `encode(variables, tiles in [-1, 1]) -> symbols` is the eval path's
    discrete latent; `decode(variables, symbols) -> tiles in [-1, 1]`;
    `coding` the bottleneck's `Coding` of a tile's symbols at that rate.
    """
    key = (rate_kind, rate)
    if key in self._fns:
      return self._fns[key]
    from pcavae import train  # pylint: disable=g-import-not-at-top
    config = self._rate_config(rate_kind, rate)
    model = train.create_model(config)
    bottleneck = (self.bottleneck if rate_kind == RATE_CODES else
                  self.bottleneck.clone(**self.bottleneck.rate_overrides(
                      RATE_SETTINGS[rate_kind], rate)))

    def encode(variables, tiles):
      _, aux = model.apply(variables, tiles, train=False)
      return aux[self.symbol_key]

    probe = np.zeros((1, self.tile_size, self.tile_size, 3), np.float32)
    _, aux = jax.jit(functools.partial(model.apply, train=False))(
        self.variables, probe)
    coding = bottleneck.coding(jax.device_get(aux))
    side = None if coding.side is None else jnp.asarray(coding.side)
    latent_shape = configlib.latent_shape(config)

    def latent(variables, symbols):
      """The bottleneck's eval output from its symbols (the decoder's half
      of each bottleneck: `latent_from_symbols`)."""
      z = model.apply(
          variables, symbols, side,
          method=lambda m, s, b: m.bottleneck.latent_from_symbols(s, b))
      return z.reshape(symbols.shape[:1] + latent_shape)

    def decode(variables, symbols):
      return model.apply(variables, latent(variables, symbols),
                         method=model.decode)

    self._fns[key] = (jax.jit(encode), jax.jit(decode), coding)
    return self._fns[key]

  def coding(self, rate_kind: int, rate: int) -> bottlenecks.Coding:
    """The bottleneck's `Coding` of a tile's symbols at a rate."""
    return self.functions(rate_kind, rate)[2]

  # -- entropy models --------------------------------------------------------

  def code_counts(self) -> np.ndarray:
    """The training counts of the fitted models (`count_symbols`) over the
    first `count_images` training images, read from / written to
    `W/codec/code_counts_step<step>.npz`."""
    if self._code_counts is None:
      self._code_counts = self._load_or_count_codes()
    return self._code_counts

  def _load_or_count_codes(self) -> np.ndarray:
    from pcavae import data  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.workdir, CODE_COUNTS_DIR,
                        f'code_counts_step{self.step}.npz')
    encode, _, coding = self.functions(RATE_CODES, 0)
    size = num_fitted(coding)
    if os.path.exists(path):
      with np.load(path) as cached:
        if (bytes(cached['fingerprint']) == self.model_fingerprint
            and cached['counts'].size == size
            and self.count_images in (None, int(cached['count_images']))):
          return np.asarray(cached['counts'], np.int64)
    num_images = (DEFAULT_COUNT_IMAGES if self.count_images is None
                  else int(self.count_images))
    source = data.get_split(self.config.dataset, self.tile_size, 'train')
    counts = np.zeros((size,), np.int64)
    for images, mask in data.eval_batches(
        source, global_batch_size=self.batch_size,
        num_examples=num_images):
      counts += count_symbols(coding,
                              np.asarray(encode(self.variables, images))[mask])
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = path + '.tmp.npz'
      np.savez(tmp, counts=counts, count_images=num_images,
               fingerprint=np.frombuffer(self.model_fingerprint, np.uint8))
      os.replace(tmp, path)
    except OSError as e:  # a read-only workdir: count again next time
      logging.warning('Could not cache the code counts in %s: %s', path, e)
    return counts

  def _streams(self, rate_kind: int, rate: int, num_tiles: int
               ) -> List[Tuple[Any, int, np.ndarray]]:
    """`(selector, count, probabilities)` per coded stream, in file order:
    the selector picks the stream's symbols out of `(num_tiles, ...)`."""
    coding = self.coding(rate_kind, rate)
    counts = self.code_counts() if num_fitted(coding) else None
    return [((slice(None), mask), num_tiles * int(mask.sum()), p)
            for mask, p in stream_models(coding, counts)]

  # -- images ----------------------------------------------------------------

  def compress(self, image: np.ndarray) -> Compressed:
    """A uint8 `(H, W, 3)` image -> a `.pcav` file's bytes."""
    from pcavae import tiling  # pylint: disable=g-import-not-at-top
    from pcavae import viz  # pylint: disable=g-import-not-at-top
    from pcavae.data import pipeline  # pylint: disable=g-import-not-at-top
    image = np.asarray(image, np.uint8)
    check_pixels(*image.shape[:2], self.max_pixels, '<image>')
    encode, decode, _ = self.functions(self.rate_kind, self.rate)
    tiles, grid = tiling.tile(image, self.tile_size)
    symbols = tiling.map_tiles(
        lambda t: encode(self.variables, pipeline.to_float(t)), tiles,
        self.batch_size).astype(np.int32)
    streams = [(symbols[sel].reshape(-1), p)
               for sel, _, p in self._streams(self.rate_kind, self.rate,
                                              grid.num_tiles)]
    words, payload_bits = encode_streams(streams)
    header = Header(self.fingerprint, grid.height, grid.width, grid.size,
                    self.rate_kind, self.rate, int(words.size))
    recon = tiling.map_tiles(lambda s: decode(self.variables, s), symbols,
                             self.batch_size)
    return Compressed(pack_file(header, words),
                      viz.to_uint8(tiling.untile(recon, grid)),
                      grid.num_tiles, payload_bits)

  def decompress(self, data: bytes, path: str = '<bytes>') -> np.ndarray:
    """`.pcav` bytes -> the uint8 `(H, W, 3)` image.

    Peak memory is a few bytes per decoded pixel: the header's size is
    checked against `max_pixels` and the payload before anything is
    allocated, and each batch of tiles is turned to uint8 as it comes.

    Raises:
      CodecError: naming `path`, whatever is wrong with the file.
    """
    from pcavae import tiling  # pylint: disable=g-import-not-at-top
    from pcavae import viz  # pylint: disable=g-import-not-at-top
    header, symbols = self.decode_symbols(data, path)
    grid = tiling.grid_for(header.height, header.width, header.tile_size)
    _, decode, _ = self.functions(header.rate_kind, header.rate)
    try:
      recon = tiling.map_tiles(
          lambda s: viz.to_uint8(decode(self.variables, s)), symbols,
          self.batch_size)
      return tiling.untile(recon, grid)
    except MemoryError as e:
      raise CodecError(f'{path}: out of memory decoding {header.width}x'
                       f'{header.height} (lower --max_pixels).') from e

  def decode_symbols(self, data: bytes, path: str = '<bytes>'
                     ) -> Tuple[Header, np.ndarray]:
    """`.pcav` bytes -> `(header, symbols of every tile)`, the eval path's
    symbols (`aux[symbol_key]`) of the tiles, row-major."""
    from pcavae import tiling  # pylint: disable=g-import-not-at-top
    header, words = unpack_file(data, path, self.fingerprint)
    if header.tile_size != self.tile_size:
      raise CodecError(f'{path}: tile size {header.tile_size}, the model '
                       f'works at {self.tile_size}.')
    check_pixels(header.height, header.width, self.max_pixels, path)
    setting = RATE_SETTINGS.get(header.rate_kind)
    if (header.rate_kind != RATE_CODES
        and setting not in self.bottleneck.rate_settings) or (
            header.rate_kind == RATE_CODES and self.bottleneck.rate_settings):
      raise CodecError(f'{path}: invalid header (rate kind '
                       f'{header.rate_kind} for a {self.kind!r} model).')
    if setting is not None:
      try:
        self.bottleneck.coding_rate(self.latent_shape,
                                    **{setting: header.rate})
      except ValueError as e:
        raise CodecError(f'{path}: invalid rate in the header: {e}') from e
    grid = tiling.grid_for(header.height, header.width, header.tile_size)
    shape = tuple(self.coding(header.rate_kind, header.rate).symbol_shape)
    streams = self._streams(header.rate_kind, header.rate, grid.num_tiles)
    coded = [(n, p) for _, n, p in streams]
    # Before allocating: the payload must be one the header's tile count and
    # rate can give, so a short file cannot claim a large image.
    low, high = payload_word_bounds(coded)
    if not low <= words.size <= high:
      raise CodecError(
          f'{path}: {words.size} payload words, but {grid.num_tiles} tiles '
          f'at this rate take {low}..{high}.')
    try:
      decoded = decode_streams(words, coded)
    except CodecError as e:
      raise CodecError(f'{path}: {e}') from e
    except Exception as e:  # pylint: disable=broad-except
      raise CodecError(f'{path}: the payload does not decode ({e}).') from e
    symbols = np.zeros((grid.num_tiles,) + shape, np.int32)
    for (sel, _, _), values in zip(streams, decoded):
      symbols[sel] = values.reshape(symbols[sel].shape)
    return header, symbols


# ---------------------------------------------------------------------------
# Folders.
# ---------------------------------------------------------------------------


def psnr_uint8(x: np.ndarray, y: np.ndarray) -> float:
  """PSNR in dB of two uint8 images of any size (`metrics.image.psnr`)."""
  from pcavae.metrics import image as image_metrics  # pylint: disable=g-import-not-at-top
  unit = lambda a: jnp.asarray(a, jnp.float32)[None] / 255.0
  return float(image_metrics.psnr(unit(x), unit(y))[0])


def compress_folder(workdir: str, input_dir: str, output_dir: str,
                    budget: Optional[int] = None, bits: Optional[int] = None,
                    batch_size: int = 32,
                    count_images: Optional[int] = None,
                    codec: Optional[Codec] = None,
                    echo=print, error=imageio.warn,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Dict[str, Any]:
  """Writes `output_dir/<relative path>.pcav` for every image under
  `input_dir` (`pcavae.imageio`: any format Pillow opens, upright, first
  frame); each file skipped or failed is named with its reason through
  `error`. Returns `{'images': [per-image dicts], 'skipped': [...],
  'failed': [...], 'bpp', 'psnr', 'seconds', 'tiles'}`."""
  if not os.path.isdir(input_dir):
    raise CodecError(f'--input={input_dir!r} is not a directory.')
  root = os.path.abspath(input_dir)
  paths, other = imageio.list_inputs(root, exclude=output_dir)
  codec = codec or Codec(workdir, budget=budget, bits=bits,
                         batch_size=batch_size, count_images=count_images,
                         max_pixels=max_pixels)
  # Count (or load) the code frequencies and compile before the clock starts.
  codec.compress(np.zeros((1, 1, 3), np.uint8))
  skipped, failed = [p for p, _ in other], []
  for p, reason in other:
    error(f'skipped {os.path.relpath(p, root)}: {reason}')
  rows, seconds = [], 0.0
  for p in paths:
    rel = os.path.relpath(p, root)
    try:
      image, notes = imageio.read_image(p, max_pixels=codec.max_pixels)
    except OSError as e:
      reason = str(e)
      error(f'skipped {rel}: '
            f'{reason[len(p) + 2:] if reason.startswith(p + ": ") else reason}')
      skipped.append(p)
      continue
    for note in notes:
      error(f'note {rel}: {note}')
    t0 = time.perf_counter()
    out = codec.compress(image)
    seconds += time.perf_counter() - t0
    dest = os.path.join(output_dir, rel + SUFFIX)
    try:
      imageio.write_bytes(out.data, dest)
    except OSError as e:
      error(f'error: {e}')
      failed.append(p)
      continue
    h, w = image.shape[:2]
    row = {'path': rel, 'file': dest, 'height': h, 'width': w,
           'bytes': len(out.data), 'tiles': out.num_tiles,
           'payload_bits': out.payload_bits,
           'bpp': 8 * len(out.data) / (h * w),
           'psnr': psnr_uint8(image, out.reconstruction)}
    rows.append(row)
    echo(f'{rel}: {w}x{h}, {row["bytes"]} bytes, {row["bpp"]:.4f} bpp, '
         f'PSNR {row["psnr"]:.2f} dB')
  return _summary(rows, skipped, failed, seconds, echo, 'compressed')


def read_pcav(path: str) -> bytes:
  """A `.pcav` file's bytes, its size checked against its header before
  the payload is read (a file cannot make the reader hold more than it is).

  Raises:
    CodecError: naming `path`: unreadable, or not the header's size.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(HEADER_BYTES)
      header, _ = unpack_header(head, path)
      size = os.fstat(f.fileno()).st_size
      if size != file_bytes(header):
        raise CodecError(f'{path}: truncated, padded or a corrupt header '
                         f'({size} bytes, the header says '
                         f'{file_bytes(header)}).')
      return head + f.read()
  except OSError as e:
    raise CodecError(f'{path}: cannot read ({e.strerror or e}).') from e


def decompress_folder(workdir: str, input_dir: str, output_dir: str,
                      batch_size: int = 32, codec: Optional[Codec] = None,
                      echo=print, error=imageio.warn,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Dict[str, Any]:
  """Writes `output_dir/<relative path>.png` for every `.pcav` under
  `input_dir` (`X.jpg.png` where `X.png` would be another file's too,
  `imageio.output_names`); a file that fails is named on one line through
  `error`, gets no image, and the folder goes on. Returns the summary of
  `compress_folder`."""
  if not os.path.isdir(input_dir):
    raise CodecError(f'--input={input_dir!r} is not a directory.')
  root = os.path.abspath(input_dir)
  files, _ = imageio.list_inputs(root, exclude=output_dir,
                                 extensions=(SUFFIX,))
  rels = [os.path.relpath(p, root)[:-len(SUFFIX)] for p in files]
  names = imageio.output_names(rels)
  codec = codec or Codec(workdir, batch_size=batch_size, for_decoding=True,
                         max_pixels=max_pixels)
  rows, failed, seconds, warm = [], [], 0.0, set()
  for p, rel, name in zip(files, rels, names):
    try:
      data = read_pcav(p)
      rate = _HEADER.unpack_from(data)[2::5]
      if rate not in warm:  # the first file of each rate compiles: untimed
        codec.decompress(data, p)
        warm.add(rate)
      t0 = time.perf_counter()
      image = codec.decompress(data, p)
      seconds += time.perf_counter() - t0
      dest = os.path.join(output_dir, name)
      imageio.save_png(image, dest)
    except (CodecError, OSError) as e:
      error(f'error: {e}')
      failed.append(p)
      continue
    h, w = image.shape[:2]
    row = {'path': rel, 'file': dest, 'height': h, 'width': w,
           'bytes': len(data), 'bpp': 8 * len(data) / (h * w),
           'tiles': -(-h // codec.tile_size) * -(-w // codec.tile_size)}
    rows.append(row)
    echo(f'{rel}: {w}x{h}, {row["bytes"]} bytes, {row["bpp"]:.4f} bpp')
  return _summary(rows, [], failed, seconds, echo, 'decompressed')


def _summary(rows, skipped, failed, seconds, echo, verb) -> Dict[str, Any]:
  pixels = sum(r['height'] * r['width'] for r in rows)
  total = {'images': rows, 'skipped': skipped, 'failed': failed,
           'seconds': seconds, 'tiles': sum(r['tiles'] for r in rows),
           'bpp': 8 * sum(r['bytes'] for r in rows) / max(pixels, 1)}
  line = (f'total: {len(rows)} images {verb}, {len(skipped)} skipped, '
          f'{len(failed)} failed, {total["bpp"]:.4f} bpp')
  if rows and 'psnr' in rows[0]:
    total['psnr'] = float(np.mean([r['psnr'] for r in rows]))
    line += f', mean PSNR {total["psnr"]:.2f} dB'
  if rows and seconds > 0:
    line += (f', {len(rows) / seconds:.2f} images/s, '
             f'{total["tiles"] / seconds:.1f} tiles/s')
  echo(line)
  return total


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def define_flags() -> None:
  """Defines the command's flags. Called by the entry point only, so that
  importing this module defines none and the package's commands can be
  imported side by side (tests, notebooks)."""
  flags.DEFINE_string('workdir', None, 'Training run directory.')
  flags.DEFINE_string(
      'input', None, 'compress: a folder of images; decompress: of .pcav files.')
  flags.DEFINE_string('output', None, 'Where to write the results.')
  flags.DEFINE_integer(
      'budget', None, 'PCA: bits per tile, water-filled over its coefficients.')
  flags.DEFINE_integer('bits', None, 'PCA: bits per coefficient.')
  flags.DEFINE_integer('batch_size', 32, 'Tiles per jitted call.')
  flags.DEFINE_integer(
      'count_images', None,
      'Codes: training images whose code frequencies make the entropy model '
      '(default: the cached counts of the checkpoint, else '
      f'{DEFAULT_COUNT_IMAGES}).')
  flags.DEFINE_integer(
      'max_pixels', DEFAULT_MAX_PIXELS,
      'The largest image compressed, or decoded from a file\'s header; '
      'larger ones are refused before anything is allocated.')


COMMANDS = ('compress', 'decompress')


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Usage: python -m pcavae.codec {"|".join(COMMANDS)}'
                         ' --workdir=W --input=IN --output=OUT')
  for name in ('workdir', 'input', 'output'):
    if flags.FLAGS[name].value is None:
      sys.exit(f'error: --{name} is required.')
  f = flags.FLAGS
  for name in ('batch_size', 'max_pixels'):
    if f[name].value < 1:
      sys.exit(f'error: --{name}={f[name].value} must be positive.')
  cli.enable_compilation_cache()
  try:
    if argv[1] == 'decompress' and (f.budget is not None
                                    or f.bits is not None):
      raise CodecError('decompress reads the rate from each file; it takes '
                       'no --budget/--bits.')
    if not os.path.isdir(f.input):
      raise CodecError(f'--input={f.input!r} is not a directory.')
    try:
      output = cli.make_workdir(f.output, flag='--output')
    except SystemExit as e:  # its one line, in this command's form
      raise CodecError(str(e)) from None
    if argv[1] == 'compress':
      summary = compress_folder(f.workdir, f.input, output, budget=f.budget,
                                bits=f.bits, batch_size=f.batch_size,
                                count_images=f.count_images,
                                max_pixels=f.max_pixels)
    else:
      summary = decompress_folder(f.workdir, f.input, output,
                                  batch_size=f.batch_size,
                                  max_pixels=f.max_pixels)
  except (CodecError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  if summary['failed']:
    sys.exit(f'error: {len(summary["failed"])} file(s) could not be '
             f'{argv[1]}ed (named above).')
  if not summary['images']:
    sys.exit(f'error: nothing was {argv[1]}ed under --input={f.input} '
             f'({len(summary["skipped"])} skipped, named above).')


def _run(command: Optional[str]) -> None:
  # WARNING, not INFO: the library logs of a restore would bury the per-image
  # lines.
  logging.set_verbosity(logging.WARNING)
  define_flags()
  if command is None:
    app.run(main)
  else:
    app.run(lambda argv: main([argv[0], command] + list(argv[1:])))


def run_compress() -> None:
  """Console script `pcavae-compress`."""
  _run('compress')


def run_decompress() -> None:
  """Console script `pcavae-decompress`."""
  _run('decompress')


if __name__ == '__main__':
  _run(None)
