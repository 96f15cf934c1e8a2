r"""Train a MaskGIT prior on a trained autoencoder's latent (`pcavae.generation`).

  python -m pcavae.train_prior --workdir=workdirs/pcavae_runlocal \
    --prior=workdirs/pcavae_runlocal/prior_b256 --budget=256

`--workdir` is a training run; the prior models the symbols its bottleneck
sends: a finite code at its own rate (VQ family, FSQ, LFQ, BSQ), a PCA at
`--budget` bits per image (water-filled) or `--bits` per coefficient, or a
KL latent's coefficients quantized at `--bits`. The training images'
sequences are encoded once and cached in `--prior`, which then holds the
orbax checkpoints (a killed run resumes from the newest) and `prior.json`
(what the prior models, its parameters and FLOPs, its final training and
held-out losses in bits per symbol). Sample it with `python -m pcavae.sample`.
"""

from typing import Sequence

from absl import app
from absl import flags

from pcavae import cli


def define_flags() -> None:
  """The command's flags (defined by the entry point only)."""
  from pcavae import generation  # pylint: disable=g-import-not-at-top
  d = generation.PriorSettings()
  flags.DEFINE_string('workdir', None, 'Training run directory.')
  flags.DEFINE_string('prior', None, 'Where the prior is written (resumed '
                      'if it holds checkpoints).')
  flags.DEFINE_integer('budget', None, 'PCA: bits per image, water-filled.')
  flags.DEFINE_integer('bits', None, 'PCA: bits per coefficient; KL: bits '
                       'per quantized coefficient.')
  flags.DEFINE_enum('size', d.size, list(generation.SIZES),
                    'Prior size (width, blocks, heads: '
                    + '; '.join(f'{k}: {v["dim"]}, {v["depth"]}, {v["heads"]}'
                                for k, v in generation.SIZES.items()) + ').')
  flags.DEFINE_integer('steps', d.steps, 'Training steps.')
  flags.DEFINE_integer('batch_size', d.batch_size, 'Sequences per step.')
  flags.DEFINE_float('learning_rate', d.learning_rate, 'Peak AdamW rate.')
  flags.DEFINE_integer('train_images', None, 'Training images encoded '
                       '(default: the whole training split).')
  flags.DEFINE_integer('eval_images', d.eval_images,
                       'Held-out images of the held-out loss.')
  flags.DEFINE_integer('decode_steps', 12, 'Decoding steps sampling uses '
                       'by default (and counted in the FLOPs).')
  flags.DEFINE_integer('max_alphabet', d.max_alphabet, 'The largest '
                       'alphabet of one token: a power-of-two alphabet above '
                       'it (a PCA coefficient of many bits) is split into '
                       'several tokens, most significant bits first.')
  flags.DEFINE_integer('seed', d.seed, 'Seed of the initialisation, batches '
                       'and masks.')
  flags.DEFINE_integer('log_every', d.log_every, 'Steps between log lines.')
  flags.DEFINE_integer('checkpoint_every', d.checkpoint_every,
                       'Steps between checkpoints.')
  flags.mark_flags_as_required(['workdir', 'prior'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from pcavae import generation  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  settings = generation.PriorSettings(
      size=f.size, steps=f.steps, batch_size=f.batch_size,
      learning_rate=f.learning_rate, train_images=f.train_images,
      eval_images=f.eval_images, seed=f.seed, log_every=f.log_every,
      checkpoint_every=f.checkpoint_every, max_alphabet=f.max_alphabet)
  if f.decode_steps < 1:
    raise app.UsageError(f'--decode_steps={f.decode_steps} must be positive.')
  try:
    settings.check()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  prior_dir = cli.make_workdir(f.prior, flag='--prior')
  cli.enable_compilation_cache()
  try:
    record = generation.train_prior(f.workdir, prior_dir, settings,
                                    budget=f.budget, bits=f.bits,
                                    decode_steps=f.decode_steps)
  except (OSError, ValueError) as e:
    raise SystemExit(f'pcavae.train_prior: {e}') from None
  p = record['prior']
  fmt = lambda v: '-' if v is None else f'{v:.4f}'
  print(f'prior: {prior_dir}  {record["kind"]} {record["latent"]} '
        f'({p["length"]} symbols, largest alphabet {p["vocab"]}, '
        f'{record["bits_per_image"]:.0f} bits per image); {p["params"]:,} '
        f'parameters; loss {fmt(record["final_loss_bits"])} (train), '
        f'{fmt(record["heldout_loss_bits"])} (held-out) bits per hidden '
        'symbol', flush=True)


def run():
  cli.setup_logging()
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
