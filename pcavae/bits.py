"""Latent bit accounting and empirical entropy (docs/design.md §3, §6).

Bits per image
--------------
`latent_bits(config)` is the size of one image's latent as the model
reconstructs it at eval, with `tokens` the number of latent locations
(`h * w`; 1 for the PCA `global` mode, whose latent is one vector):

  vq, ema_vq, simvq, vqgan_fc   tokens * log2(K)
  fsq                           tokens * sum_i log2(L_i)
  lfq, bsq                      tokens * d
  kl                            tokens * latent_channels * 32
  identity                      tokens * D * 32
  pca, coefficient_bits = b     tokens * Q * b   (b = 32: unquantized floats)
  pca, coefficient_bit_budget   the budget B, bits per image (spent exactly)

Non-integer totals (K or L_i not powers of two) are rounded up to whole bits.
Continuous latents are counted at 32 bits per float, as the PCA-VAE paper
counts its coefficients: an upper bound, not a coded size. These are the
*nominal* (fixed-length code) sizes; `entropy_bits` and `SymbolCounts` give
the size after ideal entropy coding of the same symbols (below).

Each bottleneck class states its own size (`latent_bits` of
`pcavae.models.bottlenecks`); this module asks it for a config. The
quantizer of the PCA coefficients is `pcavae.models.coding`.

Empirical entropy
-----------------
`entropy_bits(histogram)` is the plug-in entropy (bits per symbol) of a
histogram; `SymbolCounts` accumulates histograms of symbol *streams* over
an eval split and reports bits per image after ideal entropy coding with one
static model per stream: `sum_streams (symbols of the stream per image) *
H(stream)`. Streams are the bottleneck's coding streams and their groups
(`stream_slots`): a VQ/FSQ/LFQ latent is one stream (the codebook is
shared by every location); a BSQ latent one per bit position (factorised,
an upper bound on the joint entropy); a quantized PCA coefficient belongs
to the stream of its component index and bit depth, pooled over locations
(symbols are in units of each coefficient's own sigma, so they share a
shape). The estimate
is over the eval images themselves and excludes the cost of sending the
model: with few images per stream and many levels it is biased low (it
cannot exceed log2 of the number of samples per stream).
"""

from typing import Optional, Tuple

import ml_collections
import numpy as np

from pcavae import configlib
from pcavae.models import coding

# The sizes every count is made of (`pcavae.models.coding`).
FLOAT_BITS = coding.FLOAT_BITS
MAX_COEFFICIENT_BITS = coding.MAX_COEFFICIENT_BITS


# ---------------------------------------------------------------------------
# Bits per image of a config (asked of its bottleneck).
# ---------------------------------------------------------------------------


def num_tokens(config: ml_collections.ConfigDict) -> int:
  """Latent locations per image (1 for PCA `global`)."""
  return configlib.make_bottleneck(config).num_tokens(
      configlib.latent_shape(config))


def num_codes(config: ml_collections.ConfigDict) -> Optional[int]:
  """K, the (implicit) codebook size of a discrete bottleneck, else None."""
  return configlib.make_bottleneck(config).num_codes


def latent_bits(config: ml_collections.ConfigDict) -> int:
  """Bits per image of the latent as reconstructed (module docstring)."""
  return configlib.make_bottleneck(config).latent_bits(
      configlib.latent_shape(config))


def pca_symbol_streams(symbol_bits: np.ndarray) -> np.ndarray:
  """Entropy-model stream of each quantized PCA coefficient of an image.

  Args:
    symbol_bits: bits of each coefficient of one image, `(..., Q)`.

  Returns:
    int64 stream ids of the same shape: one per (component, bit depth).
  """
  symbol_bits = np.asarray(symbol_bits, np.int64)
  component = np.broadcast_to(np.arange(symbol_bits.shape[-1]),
                              symbol_bits.shape)
  return component * (MAX_COEFFICIENT_BITS + 1) + symbol_bits



# ---------------------------------------------------------------------------
# Empirical entropy.
# ---------------------------------------------------------------------------


def entropy_bits(histogram) -> float:
  """Plug-in entropy, in bits per symbol, of a histogram of counts."""
  h = np.asarray(histogram, np.float64).reshape(-1)
  total = h.sum()
  if total <= 0:
    return 0.0
  p = h[h > 0] / total
  return float(-np.sum(p * np.log2(p)))


def stream_slots(coding) -> Tuple[np.ndarray, np.ndarray]:
  """`(slots, ids)` of a bottleneck's `Coding`: the flat indices of the
  symbols of one image that are sent, and the `SymbolCounts` stream of
  each (one per stream and group: `CodingStream.group_ids`)."""
  streams = coding.streams
  groups = 1 + max([int(s.group_ids().max()) for s in streams] + [0])
  slots = [np.flatnonzero(s.select) for s in streams]
  ids = [j * groups + s.group_ids()[s.select] for j, s in enumerate(streams)]
  if not slots:
    return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
  return np.concatenate(slots), np.concatenate(ids)


def binary_entropy(p) -> np.ndarray:
  """`H(p)` in bits of Bernoulli(p), elementwise (0 at p = 0 and 1)."""
  p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
  out = np.zeros_like(p)
  inside = (p > 0) & (p < 1)
  q = p[inside]
  out[inside] = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
  return out


class SymbolCounts:
  """Histograms of symbol streams accumulated over batches of images.

  `update(symbols, streams)` adds a batch: `symbols` `(n, S)` non-negative
  ints (n images, S symbols each), `streams` `(S,)` the stream of each slot.
  `bits_per_image()` is the ideal entropy-coded size (module docstring).
  """

  def __init__(self):
    self.num_images = 0
    self._keys = np.zeros((0,), np.int64)
    self._counts = np.zeros((0,), np.int64)

  def update(self, symbols, streams) -> None:
    symbols = np.asarray(symbols, np.int64)
    if symbols.ndim != 2:
      raise ValueError(f'symbols must be (images, slots), got {symbols.shape}.')
    streams = np.broadcast_to(np.asarray(streams, np.int64),
                              symbols.shape[1:])
    if symbols.size and (symbols.min() < 0 or symbols.max() >= 2 ** 32):
      raise ValueError('symbols must lie in [0, 2^32).')
    keys = (streams[None, :] << 32) | symbols
    keys, counts = np.unique(keys.reshape(-1), return_counts=True)
    merged = np.concatenate([self._keys, keys])
    self._keys, inverse = np.unique(merged, return_inverse=True)
    self._counts = np.bincount(
        inverse, weights=np.concatenate([self._counts, counts]),
        minlength=self._keys.size).astype(np.int64)
    self.num_images += symbols.shape[0]

  def stream_entropies(self) -> dict:
    """`{stream: (symbols per image, bits per symbol)}`."""
    out = {}
    streams = self._keys >> 32
    for s in np.unique(streams):
      counts = self._counts[streams == s]
      out[int(s)] = (counts.sum() / max(self.num_images, 1),
                     entropy_bits(counts))
    return out

  def bits_per_image(self) -> float:
    return float(sum(n * h for n, h in self.stream_entropies().values()))


# ---------------------------------------------------------------------------
# Entropy models of the symbols (fixed before coding; `pcavae.codec`).
# ---------------------------------------------------------------------------


def smoothed_code_probabilities(counts) -> np.ndarray:
  """Add-1/2 (Krichevsky-Trofimov) estimate `(n_k + 1/2) / (N + K/2)` of a
  histogram of codes: no code has probability 0."""
  counts = np.asarray(counts, np.float64)
  return (counts + 0.5) / (counts.sum() + 0.5 * counts.size)
