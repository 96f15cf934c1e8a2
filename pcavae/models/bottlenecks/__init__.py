"""Latent bottlenecks and the name -> class registry.

One module per family, each class registering itself under its
`config.model.bottleneck.kind` and owning its facts (`base.Bottleneck`):

  base        the base class, `register` / `get` / `names`, shared helpers
  pca_layer   `pca`: the online PCA layer (PCA-VAE)
  vq          `vq`, `ema_vq`, `simvq`, `vqgan_fc`: vector quantizers
  scalar      `fsq`, `lfq`: scalar quantizers
  bsq         `bsq`: binary spherical quantization
  kl          `kl`: the diagonal-Gaussian posterior (AutoencoderKL)
  identity    `identity`: the plain autoencoder

A bottleneck defined elsewhere (a notebook, a test) joins by subclassing
`Bottleneck` and decorating the class with `register(kind)`.
"""

# pylint: disable=g-importing-member,unused-import
from pcavae.models.bottlenecks.base import BITS
from pcavae.models.bottlenecks.base import Bottleneck
from pcavae.models.bottlenecks.base import CATEGORICAL
from pcavae.models.bottlenecks.base import Coding
from pcavae.models.bottlenecks.base import CodingStream
from pcavae.models.bottlenecks.base import FIXED
from pcavae.models.bottlenecks.base import get
from pcavae.models.bottlenecks.base import names
from pcavae.models.bottlenecks.base import register
from pcavae.models.bottlenecks.base import warmup_kinds
from pcavae.models.bottlenecks.bsq import BSQBottleneck
from pcavae.models.bottlenecks.identity import IdentityBottleneck
from pcavae.models.bottlenecks.kl import KLBottleneck
from pcavae.models.bottlenecks.pca_layer import PCA_MODES
from pcavae.models.bottlenecks.pca_layer import PCA_TRACKERS
from pcavae.models.bottlenecks.pca_layer import PCABottleneck
from pcavae.models.bottlenecks.scalar import FSQBottleneck
from pcavae.models.bottlenecks.scalar import fsq_bound
from pcavae.models.bottlenecks.scalar import fsq_codes_to_indices
from pcavae.models.bottlenecks.scalar import fsq_indices_to_codes
from pcavae.models.bottlenecks.scalar import fsq_quantize
from pcavae.models.bottlenecks.scalar import lfq_codebook
from pcavae.models.bottlenecks.scalar import LFQBottleneck
from pcavae.models.bottlenecks.vq import ema_codebook_update
from pcavae.models.bottlenecks.vq import EMAVQBottleneck
from pcavae.models.bottlenecks.vq import FactorizedVQBottleneck
from pcavae.models.bottlenecks.vq import nearest_code
from pcavae.models.bottlenecks.vq import SimVQBottleneck
from pcavae.models.bottlenecks.vq import VQBottleneck
