"""The decoder against hostile `.pcav` files: a seeded, bounded fuzz run on
files of the tiny trained PCA and FSQ models, where nothing but `CodecError`
may come out and no file may cost more than the image it holds.

For long campaigns, `tests/fuzz_codec.py` runs the same decoder under
atheris."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from pcavae import codec as codec_lib
from pcavae.data import image_folder
from pcavae.data import photo_patches

BUDGET = 24  # bits per 16 x 16 tile, as in test_codec.py
NUM_MUTANTS = 150  # per model: 300 files in all
# Offsets of the header's fields (`codec._HEADER`, '<4sBB8sIIHIII').
FIELDS = {'version': (4, '<B'), 'rate_kind': (5, '<B'), 'height': (14, '<I'),
          'width': (18, '<I'), 'tile_size': (22, '<H'), 'rate': (24, '<I'),
          'payload_words': (28, '<I')}
# What each of the decoder's checks says (a phrase of its message).
CHECKS = {'crc': 'CRC-32 mismatch', 'size': 'truncated', 'magic': 'not a .pcav',
          'version': 'format version', 'model': 'written by another model',
          'invalid': 'invalid', 'tile': 'tile size', 'pixels': 'over the limit',
          'bounds': 'payload words, but', 'end': 'does not end where',
          'decode': 'does not decode'}


@pytest.fixture(scope='module')
def codecs(codec_pca_workdir, codec_fsq_workdir):
  return {'pca': codec_lib.Codec(codec_pca_workdir, budget=BUDGET,
                                 batch_size=8),
          'fsq': codec_lib.Codec(codec_fsq_workdir, batch_size=8,
                                 count_images=64)}


@pytest.fixture(scope='module')
def photo():
  return image_folder.read_rgb(photo_patches.photo_path('coffee'))[
      100:137, 200:221]


def with_crc(data: bytes) -> bytes:
  """`data` with its CRC-32 recomputed, so the edit reaches the decoder."""
  head = data[:codec_lib.HEADER_BYTES - 4]
  payload = data[codec_lib.HEADER_BYTES:]
  return head + struct.pack('<I', zlib.crc32(head + payload)) + payload


def set_field(data: bytes, name: str, value: int) -> bytes:
  offset, fmt = FIELDS[name]
  out = bytearray(data)
  struct.pack_into(fmt, out, offset, value)
  return bytes(out)


def header_only(data: bytes, height: int, width: int) -> bytes:
  """The attack of a header copied from a real file (fingerprint and all),
  a large size, no payload, and a valid CRC."""
  data = set_field(set_field(data[:codec_lib.HEADER_BYTES], 'height', height),
                   'width', width)
  return with_crc(set_field(data, 'payload_words', 0))


def mutants(data: bytes, rng: np.random.Generator, n: int):
  """`n` (kind, bytes) mutations of a valid file."""
  words = (len(data) - codec_lib.HEADER_BYTES) // 4
  sizes = [0, 1, 2, 15, 16, 17, 255, 4096, 65535, 2 ** 31, 2 ** 32 - 1]
  for i in range(n):
    kind = i % 6
    if kind == 0:  # bit flips anywhere; the CRC should catch them
      out = bytearray(data)
      for _ in range(rng.integers(1, 4)):
        out[rng.integers(len(out))] ^= 1 << int(rng.integers(8))
      yield 'flip', bytes(out)
    elif kind == 1:  # truncated or extended
      cut = int(rng.integers(0, len(data) + 8))
      yield 'length', (data[:cut] if cut <= len(data)
                       else data + rng.bytes(cut - len(data)))
    elif kind == 2:  # one header field, CRC recomputed
      name = list(FIELDS)[int(rng.integers(len(FIELDS)))]
      value = int(rng.choice(sizes))
      bound = 255 if FIELDS[name][1] == '<B' else 65535 if FIELDS[
          name][1] == '<H' else 2 ** 32 - 1
      if name == 'rate':  # a few values only: each valid one compiles
        value = int(rng.choice([0, 1, BUDGET - 1, 2 ** 31]))
      yield 'header ' + name, with_crc(set_field(data, name, min(value, bound)))
    elif kind == 3:  # the image's size, payload kept, CRC recomputed
      h, w = (int(v) for v in rng.choice(sizes, 2))
      yield 'size', with_crc(set_field(set_field(data, 'height', h),
                                       'width', w))
    elif kind == 4:  # payload bits, CRC recomputed
      out = bytearray(data)
      at = codec_lib.HEADER_BYTES + int(rng.integers(len(data) -
                                                     codec_lib.HEADER_BYTES))
      out[at] ^= 1 << int(rng.integers(8))
      yield 'payload flip', with_crc(bytes(out))
    else:  # payload words dropped, added or replaced, header kept in step
      keep = int(rng.integers(0, words + 3))
      payload = data[codec_lib.HEADER_BYTES:][:4 * keep]
      payload += rng.bytes(4 * keep - len(payload))
      if rng.random() < 0.3:
        payload = rng.bytes(len(payload))
      out = set_field(data[:codec_lib.HEADER_BYTES], 'payload_words', keep)
      yield 'payload words', with_crc(out + payload)


@pytest.mark.parametrize('which', ['pca', 'fsq'])
def test_only_codec_errors_come_out(which, codecs, photo):
  c = codecs[which]
  data = c.compress(photo).data
  rng = np.random.default_rng(0)
  reasons, decoded = {}, 0
  for kind, mutant in mutants(data, rng, NUM_MUTANTS):
    try:
      image = c.decompress(mutant, 'm.pcav')
    except codec_lib.CodecError as e:
      assert str(e).startswith('m.pcav: '), (kind, e)
      reason = next((name for name, words in CHECKS.items()
                     if words in str(e)), str(e))
      reasons[reason] = reasons.get(reason, 0) + 1
    else:  # a mutant that decodes is an image the header's size allows
      header, _ = codec_lib.unpack_file(mutant, 'm.pcav')
      assert image.shape == (header.height, header.width, 3), kind
      assert image.dtype == np.uint8
      assert header.height * header.width <= c.max_pixels
      decoded += 1
  # Each layer of checks turned some mutants away, and every message is one
  # of theirs.
  assert set(reasons) <= set(CHECKS), reasons
  for reason in ('crc', 'size', 'pixels', 'bounds', 'end'):
    assert reasons.get(reason, 0) > 0, (reason, reasons)
  assert decoded < NUM_MUTANTS // 10, (decoded, reasons)


@pytest.mark.parametrize('side', [5000, 8192, 12000, 100_000])
def test_a_header_cannot_claim_a_large_image(side, codecs, photo):
  """A copied header with a large size and no payload: refused before any
  allocation, by the pixel limit or the payload's bounds."""
  c = codecs['pca']
  data = c.compress(photo).data
  c.decompress(data)  # compiled and warm: what follows is the check alone
  attack = header_only(data, side, side)
  tracemalloc.start()
  try:
    with pytest.raises(codec_lib.CodecError) as raised:
      c.decompress(attack, 'big.pcav')
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  message = str(raised.value)
  if side * side > codec_lib.DEFAULT_MAX_PIXELS:
    assert 'over the limit of 67,108,864 (--max_pixels)' in message
  else:
    assert 'big.pcav: 0 payload words, but' in message
  assert peak < 1 << 20, peak  # under 1 MiB: nothing the size asked for


def test_a_lower_pixel_limit_refuses_the_real_file(codec_pca_workdir, photo):
  c = codec_lib.Codec(codec_pca_workdir, budget=BUDGET, batch_size=8,
                      max_pixels=37 * 21 - 1)
  with pytest.raises(codec_lib.CodecError, match='over the limit'):
    c.compress(photo)
  data = codec_lib.Codec(codec_pca_workdir, budget=BUDGET,
                         batch_size=8).compress(photo).data
  with pytest.raises(codec_lib.CodecError, match='a.pcav: 21x37 is 777'):
    c.decompress(data, 'a.pcav')


def test_payload_bounds_hold_the_real_payloads(codecs, photo):
  """The bounds admit every real file (tiny to a full photograph's crop) and
  are tight enough to refuse a payload a quarter too short or long."""
  for c in codecs.values():
    for image in (photo[:1, :1], photo, np.tile(photo, (3, 5, 1))):
      data = c.compress(image).data
      header, words = codec_lib.unpack_file(data, 'x')
      grid_tiles = -(-header.height // 16) * -(-header.width // 16)
      streams = c._streams(header.rate_kind, header.rate, grid_tiles)  # pylint: disable=protected-access
      # Every symbol of every tile is in exactly one stream.
      per_tile = int(np.prod(c.coding(header.rate_kind,
                                      header.rate).symbol_shape))
      assert sum(n for _, n, _ in streams) <= grid_tiles * per_tile
      coded = [(n, p) for _, n, p in streams]
      low, high = codec_lib.payload_word_bounds(coded)
      assert low <= words.size <= high, (low, words.size, high)
  # The 1-bit Gaussian model costs exactly 1 bit a symbol: both bounds are
  # that, give or take the flush and the precision slack.
  low, high = codec_lib.payload_word_bounds(
      [(32_000, np.array([0.5, 0.5]))])
  assert 995 <= low <= 1000 and 1000 <= high <= 1005, (low, high)
