r"""Sample images from a trained prior (`pcavae.train_prior`).

  python -m pcavae.sample --workdir=workdirs/pcavae_runlocal \
    --prior=workdirs/pcavae_runlocal/prior_b256 --num=64 --output=samples/

The prior's MaskGIT decoding (`models.prior.decode`, one jitted function for
every batch) draws symbol sequences, the run's decoder turns them into
images, and each is written as `<output>/sample_<i>.png`, with
`<output>/grid.png` (all of them, 8 to a row up to 64) and
`<output>/samples.json` (the settings). Batch k of `--batch_size` uses the key
`fold_in(PRNGKey(--seed), k)`: the same seed gives the same images.
"""

import json
import os
from typing import Sequence

from absl import app
from absl import flags

from pcavae import cli


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The training run the prior models.')
  flags.DEFINE_string('prior', None, 'A `pcavae.train_prior` output folder.')
  flags.DEFINE_integer('num', 16, 'Images to sample.')
  flags.DEFINE_string('output', None, 'Where the PNGs are written.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('steps', None, 'Decoding steps (default: the '
                       'prior\'s, 12 unless set at training).')
  flags.DEFINE_float('temperature', 1.0, 'Temperature of the symbols.')
  flags.DEFINE_float('choice_temperature', 4.5, 'Scale of the Gumbel noise '
                     'choosing which symbols to keep (annealed to 0).')
  flags.DEFINE_integer('batch_size', 32, 'Sequences per jitted call.')
  flags.DEFINE_bool('progress', True, 'Progress bar on stderr.')
  flags.mark_flags_as_required(['workdir', 'prior', 'output'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  for name in ('num', 'batch_size'):
    if getattr(f, name) < 1:
      raise app.UsageError(f'--{name}={getattr(f, name)} must be positive.')
  if f.steps is not None and f.steps < 1:
    raise app.UsageError(f'--steps={f.steps} must be positive.')
  if not f.temperature > 0:
    raise app.UsageError(f'--temperature={f.temperature} must be > 0.')
  output = cli.make_workdir(f.output, flag='--output')
  cli.enable_compilation_cache()
  from pcavae import generation  # pylint: disable=g-import-not-at-top
  from pcavae import viz  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    prior = generation.Prior(f.prior, f.workdir)
    images, _ = prior.sample(f.num, seed=f.seed, steps=f.steps,
                             temperature=f.temperature,
                             choice_temperature=f.choice_temperature,
                             batch_size=f.batch_size, progress=f.progress)
  except (OSError, ValueError) as e:
    raise SystemExit(f'pcavae.sample: {e}') from None
  pixels = viz.to_uint8(images)
  width = len(str(f.num - 1))
  for i, im in enumerate(pixels):
    Image.fromarray(im).save(os.path.join(output,
                                          f'sample_{i:0{width}d}.png'))
  grid = viz.sample_grid(images[:64])
  Image.fromarray(grid).save(os.path.join(output, 'grid.png'))
  record = {'workdir': os.path.abspath(f.workdir),
            'prior': os.path.abspath(f.prior), 'num': f.num, 'seed': f.seed,
            'steps': f.steps or prior.record['decode_steps'],
            'temperature': f.temperature,
            'choice_temperature': f.choice_temperature,
            **prior.describe}
  with open(os.path.join(output, 'samples.json'), 'w') as fh:
    json.dump(record, fh, indent=1)
  print(f'wrote {f.num} samples to {output} ({prior.describe["kind"]}, '
        f'{prior.space.length} symbols each; grid.png)', flush=True)


def run():
  cli.setup_logging()
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
