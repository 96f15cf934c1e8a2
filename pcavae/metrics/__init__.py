"""Image metrics: PSNR/SSIM, LPIPS, Frechet distance, precision/recall."""

from pcavae.metrics.image import psnr, ssim, to_unit  # noqa: F401
from pcavae.metrics.fid import (  # noqa: F401
    FidStats, extract_features, feature_stats, frechet_distance,
    load_features, rfid_from_features, save_features)
from pcavae.metrics.precision_recall import precision_recall  # noqa: F401
from pcavae.metrics.inception import (  # noqa: F401
    inception_apply, load_inception_params, make_inception_features)
from pcavae.metrics.lpips import (  # noqa: F401
    load_lpips_params, lpips_alex_any_size, lpips_apply, make_lpips)
from pcavae.metrics.codebook import (  # noqa: F401
    code_histogram, codebook_stats)
