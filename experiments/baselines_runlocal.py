r"""Every bottleneck on `photo_patches` with the same encoder/decoder and steps.

Trains each family's `runlocal` config (32 px, channels 32/64, an 8x8x64
latent, batch 32, Adam 1e-3 cosine, MSE; see configs/common.py) one after
the other into `<root>/<family>`, then prints a markdown table of the final
eval over the held-out split (512 images): PSNR, SSIM, LPIPS (AlexNet),
codebook usage and perplexity (discrete bottlenecks) and latent bits per
image as `pcavae.bits.latent_bits` counts them. The table and the numbers
are also written to `<root>/results.md` and `<root>/results.json`.

  python experiments/baselines_runlocal.py                 # 1500 steps each
  python experiments/baselines_runlocal.py --steps=600     # shorter, equal

A finished family is not retrained (its workdir is resumed at its last
step and only evaluated), so an interrupted sweep continues where it
stopped. `--families=vqvae,fsq` runs a subset. `--quick` is a smoke run of
the same script (16 px, channels 8/16, 2 steps, 16 eval images, no LPIPS;
`configlib.shrink_for_smoke_run`), not a measurement.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from pcavae import bits
from pcavae import configlib
from pcavae import harness

FAMILIES = ('pcavae', 'ae', 'kl', 'vqvae', 'ema_vq', 'simvq', 'vqgan_fc',
            'fsq', 'lfq', 'bsq')
NAMES = {'pcavae': 'PCA-VAE (spatial, Q=16)', 'ae': 'AE (identity)',
         'kl': 'KL-VAE (4 ch)', 'vqvae': 'VQ-VAE (K=1024)',
         'ema_vq': 'EMA-VQ (K=1024)', 'simvq': 'SimVQ (K=1024)',
         'vqgan_fc': 'VQGAN-FC (K=1024, d=8)', 'fsq': 'FSQ (8,5,5,5)',
         'lfq': 'LFQ (d=10)', 'bsq': 'BSQ (d=18)'}

_ROOT = flags.DEFINE_string('root', os.path.join(harness.WORKDIRS,
                                                 'baselines'),
                            'Parent of the per-family workdirs.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Train steps for every family; 0 '
                              'keeps the runlocal default (1500).')
_FAMILIES = flags.DEFINE_list('families', list(FAMILIES),
                              'Config families (configs/<name>.py) to run.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: tiny models, 2 steps '
                           '(configlib.shrink_for_smoke_run).')


def table(rows):
  """Markdown table of the result rows."""
  return '\n'.join(harness.markdown_table(
      ['bottleneck', 'PSNR (dB)', 'SSIM', 'LPIPS', 'codebook usage',
       'perplexity', 'bit entropy', 'latent bits / image', 'train min'],
      [[r['name'], harness.fmt(r['psnr'], '.2f'),
        harness.fmt(r['ssim'], '.3f'), harness.fmt(r['lpips'], '.3f'),
        harness.fmt(r['usage'], '.1%'), harness.fmt(r['perplexity'], '.0f'),
        harness.fmt(r.get('bit_entropy'), '.3f'), f"{r['bits']:,}",
        harness.fmt(r['minutes'], '.1f')] for r in rows]))


def main(argv):
  del argv
  rows = []
  for family in _FAMILIES.value:
    steps = _STEPS.value
    config = harness.load_config(family, 'runlocal', {
        'num_train_steps': steps, 'eval_every_steps': steps,
        'checkpoint_every_steps': steps} if steps else {})
    config.tensorboard = False
    if _QUICK.value:
      configlib.shrink_for_smoke_run(config, steps=steps or 2)
    record = harness.train_once(config, os.path.join(_ROOT.value, family))
    final, minutes = record['final'], record['train_minutes']
    row = {'family': family, 'name': NAMES.get(family, family),
           'steps': final['step'], 'psnr': final['eval/psnr'],
           'ssim': final['eval/ssim'], 'lpips': final.get('eval/lpips_alex'),
           'usage': final.get('eval/codebook_usage'),
           'perplexity': final.get('eval/codebook_perplexity'),
           'dead_codes': final.get('eval/dead_codes'),
           'bit_entropy': final.get('eval/bit_entropy_mean'),
           'bits': bits.latent_bits(config), 'minutes': minutes,
           'num_images': final['eval/num_images']}
    logging.info('%s: %s', family, row)
    print(json.dumps(row), flush=True)
    rows.append(row)
  md = table(rows)
  os.makedirs(_ROOT.value, exist_ok=True)
  with open(os.path.join(_ROOT.value, 'results.md'), 'w') as f:
    f.write(md + '\n')
  with open(os.path.join(_ROOT.value, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print(md)


if __name__ == '__main__':
  app.run(main)
