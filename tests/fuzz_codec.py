r"""A coverage-guided fuzz campaign of the `.pcav` decoder under atheris.

  pip install -e '.[fuzz]'    # atheris; CI does not need it
  python tests/fuzz_codec.py --workdir=W [--budget=B] FUZZ_DIR/corpus \
      -max_total_time=600 -rss_limit_mb=4096

Every input goes through `Codec.decompress` (the whole decoder: header,
limits, payload bounds, range decoding, the model's decoder); anything but a
`CodecError` is a finding, and atheris writes the input that raised it
(`crash-*`) to the current directory. With `--fix_crc` (the default) the
input's CRC-32 is recomputed first, so mutations reach the decoder past the
checksum, as a deliberate attacker's would. `-rss_limit_mb` turns a header
that costs more memory than its image into a finding too.

Without `--workdir`, a tiny PCA run is trained into `FUZZ_DIR/run` (seconds,
the test suite's tiny config). The corpus folder is seeded with files of a
photograph's crops compressed by the model. `tests/test_codec_fuzz.py` is the
short, seeded run CI does.
"""

import argparse
import os
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _tiny_run(workdir: str) -> str:
  """Trains the test suite's tiny PCA model into `workdir` once."""
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    sys.path.insert(0, HERE)
    from conftest import tiny_config  # pylint: disable=g-import-not-at-top
    from pcavae import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(
        tiny_config('pcavae', **{'eval.lpips': False, 'eval_every_steps': 6,
                                 'checkpoint_every_steps': 6}), workdir)
  return workdir


def fix_crc(data: bytes, header_bytes: int) -> bytes:
  """`data` with the CRC-32 field made to match its other bytes."""
  if len(data) < header_bytes:
    return data
  head, payload = data[:header_bytes - 4], data[header_bytes:]
  return head + struct.pack('<I', zlib.crc32(head + payload)) + payload


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--budget', type=int, default=24,
                      help='PCA: bits per tile of the seed files.')
  parser.add_argument('--fix_crc', action=argparse.BooleanOptionalAction,
                      default=True)
  parser.add_argument('--max_pixels', type=int, default=None,
                      help='The decoder\'s limit (default: the codec\'s).')
  args, rest = parser.parse_known_args()
  corpus = next((a for a in rest if not a.startswith('-')), None)
  if corpus is None:
    parser.error('give a corpus folder (created and seeded if empty).')

  import atheris  # pylint: disable=g-import-not-at-top
  # The libraries load uninstrumented (fast); the codec is what is traced.
  import jax  # pylint: disable=g-import-not-at-top,unused-import
  import constriction  # pylint: disable=g-import-not-at-top,unused-import
  from pcavae import train  # pylint: disable=g-import-not-at-top,unused-import
  from pcavae.data import image_folder  # pylint: disable=g-import-not-at-top
  from pcavae.data import photo_patches  # pylint: disable=g-import-not-at-top
  with atheris.instrument_imports(include=['pcavae.codec']):
    from pcavae import codec as codec_lib  # pylint: disable=g-import-not-at-top

  workdir = args.workdir or _tiny_run(
      os.path.join(os.path.dirname(os.path.abspath(corpus)), 'run'))
  kind = train.load_config(workdir).model.bottleneck.kind
  limits = ({} if args.max_pixels is None
            else {'max_pixels': args.max_pixels})
  codec = codec_lib.Codec(workdir, budget=args.budget if kind == 'pca'
                          else None, batch_size=8, **limits)
  os.makedirs(corpus, exist_ok=True)
  if not os.listdir(corpus):
    photo = image_folder.read_rgb(photo_patches.photo_path('coffee'))
    for i, (h, w) in enumerate([(1, 1), (16, 16), (37, 21), (64, 96)]):
      with open(os.path.join(corpus, f'seed{i}.pcav'), 'wb') as f:
        f.write(codec.compress(photo[100:100 + h, 200:200 + w]).data)

  def one_input(data: bytes) -> None:
    if args.fix_crc:
      data = fix_crc(data, codec_lib.HEADER_BYTES)
    try:
      image = codec.decompress(data, 'fuzz.pcav')
    except codec_lib.CodecError:
      return
    assert image.dtype == np.uint8 and image.ndim == 3

  atheris.Setup([sys.argv[0]] + rest, one_input)
  atheris.Fuzz()


if __name__ == '__main__':
  main()
