"""The VQGAN objective (Esser et al. 2021), usable with any bottleneck.

Selected by `config.loss.kind = 'vqgan'`. The generator (the autoencoder)
minimises

  L = L_pix + perceptual_weight * LPIPS + lambda * L_G + L_bottleneck,

with `L_pix` the configured `config.loss.reconstruction` (its default
'auto' is L1 here, as in taming), `L_bottleneck` the bottleneck's loss (the
KL scaled to latent-diffusion units, `train.bottleneck_loss_scale`),
`L_G = -mean D(x_hat)` and the adaptive weight

  lambda = clip(||grad_last L_rec|| / (||grad_last L_G|| + 1e-4), 0, 1e4)
           * disc_weight * disc_factor,   zero before `disc_start`,

where `L_rec = L_pix + perceptual_weight * LPIPS` and `last` is the kernel
of the decoder's final conv (`conv_out`). The PatchGAN discriminator
(`models/discriminator.py`) minimises the hinge loss with its own Adam; its
parameters and optimizer state are the `disc_params` / `disc_opt_state`
entries of the train state and are updated in the same jitted step.

One step runs the autoencoder forward once, as a `jax.vjp`: the cotangents
of `L_rec` and `L_G` w.r.t. the reconstruction are cheap (LPIPS and D only);
pulling each back gives the two last-layer gradients (under jit everything
but the last layer's part of those two pullbacks is dead code and dropped);
the parameter gradient is one more pullback of `ct_rec + lambda * ct_G`, so
the autoencoder's backward pass runs once, as with a single loss.
"""

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pcavae import losses
from pcavae import train_state
from pcavae.models import discriminator

Array = jax.Array
State = Dict[str, Any]

KINDS = ('reconstruction', 'vqgan')
STATE_KEYS = ('disc_params', 'disc_opt_state')
LAST_LAYER = ('decoder', 'conv_out', 'kernel')


def enabled(config: ml_collections.ConfigDict) -> bool:
  return config.loss.get('kind', 'reconstruction') == 'vqgan'


def make_discriminator(config: ml_collections.ConfigDict
                       ) -> discriminator.PatchDiscriminator:
  lc = config.loss
  return discriminator.PatchDiscriminator(
      num_layers=lc.disc_layers, filters=lc.disc_filters, norm=lc.disc_norm)


def make_disc_optimizer(config: ml_collections.ConfigDict
                        ) -> optax.GradientTransformation:
  """Adam with taming's betas (0.5, 0.9), constant `disc_lr`."""
  lc = config.loss
  return optax.adam(lc.disc_lr, b1=lc.disc_b1, b2=lc.disc_b2)


def init_state(config: ml_collections.ConfigDict, rng: Array) -> State:
  """`{disc_params, disc_opt_state}` for a new run."""
  r = config.resolution
  params = make_discriminator(config).init(
      rng, jnp.zeros((1, r, r, 3), jnp.float32))['params']
  return {'disc_params': params,
          'disc_opt_state': make_disc_optimizer(config).init(params)}


def last_layer(tree: Any) -> Array:
  """The decoder's final conv kernel in a params-shaped tree."""
  node = tree
  for key in LAST_LAYER:
    if key not in node:
      raise KeyError(
          f'The VQGAN adaptive weight needs params[{"][".join(LAST_LAYER)}] '
          '(the decoder\'s final conv); the model has no such entry.')
    node = node[key]
  return node


def make_perceptual(config: ml_collections.ConfigDict
                    ) -> Callable[[Array, Array], Array]:
  """LPIPS `(x, y) -> (B,)`, or None when `perceptual_weight` is 0."""
  if not config.loss.perceptual_weight:
    return None
  from pcavae import metrics  # pylint: disable=g-import-not-at-top
  # Default precision: this is a training loss, not the reported metric.
  return metrics.make_lpips(config.loss.perceptual_net, precision=None)


def make_grad_fn(model, config: ml_collections.ConfigDict,
                 rec_loss_fn: Callable[[Array, Array], Array]) -> Callable:
  """Returns the VQGAN part of the train step.

  `grad_fn(state, batch, lr, rng, cols, bottleneck_scale=1.0) -> (loss,
  new_cols, aux, rec, grads, gan_state, measurements)`: the generator's total
  loss, the updated non-trainable collections, the bottleneck's aux (its
  `loss` times `bottleneck_scale`, as added to the total), `L_rec` (pixel +
  weighted perceptual; the trainer logs it as `reconstruction_loss`), the
  gradient w.r.t. `state['params']`, the updated `disc_params` /
  `disc_opt_state`, and `gan/...` scalars (`gan/pixel_loss`,
  `gan/perceptual_loss` unweighted, `gan/adaptive_weight`, ...).
  """
  lc = config.loss
  disc = make_discriminator(config)
  disc_tx = make_disc_optimizer(config)
  perceptual = make_perceptual(config)

  def grad_fn(state: State, batch: Array, lr: Array, rng: Array,
              cols: Tuple[str, ...], bottleneck_scale: float = 1.0):
    def forward(params):
      variables = {'params': params, **train_state.collections_of(state)}
      out = model.apply(variables, batch, train=True, lr=lr,
                        mutable=list(cols) if cols else False,
                        rngs={'sample': rng})
      (recon, aux), new_cols = out if cols else (out, {})
      aux = dict(aux, loss=bottleneck_scale * aux['loss'])
      return (recon, aux['loss']), (aux, dict(new_cols))

    (recon, bottleneck_loss), pullback, (aux, new_cols) = jax.vjp(
        forward, state['params'], has_aux=True)

    def rec_fn(r):
      pix = rec_loss_fn(r, batch)
      perc = (jnp.mean(perceptual(r, batch)) if perceptual is not None
              else jnp.zeros((), jnp.float32))
      return pix + lc.perceptual_weight * perc, (pix, perc)

    (rec_total, (pix, perc)), ct_rec = jax.value_and_grad(
        rec_fn, has_aux=True)(recon)
    disc_params = state['disc_params']

    def gen_fn(r):
      return losses.generator_loss(disc.apply({'params': disc_params}, r))

    gen, ct_gen = jax.value_and_grad(gen_fn)(recon)
    zero = jnp.zeros_like(bottleneck_loss)
    rec_last = last_layer(pullback((ct_rec, zero))[0])
    gen_last = last_layer(pullback((ct_gen, zero))[0])
    active = (state['step'] >= lc.disc_start).astype(jnp.float32)
    lam = losses.adaptive_weight(
        rec_last, gen_last, lc.disc_weight,
        lc.adaptive_weight_max) * lc.disc_factor * active
    (grads,) = pullback((ct_rec + lam * ct_gen, jnp.ones_like(zero)))
    loss = rec_total + lam * gen + bottleneck_loss

    fake = jax.lax.stop_gradient(recon)

    def disc_loss_fn(dp):
      logits_real = disc.apply({'params': dp}, batch)
      logits_fake = disc.apply({'params': dp}, fake)
      hinge = losses.hinge_disc_loss(logits_real, logits_fake)
      return active * lc.disc_factor * hinge, (hinge, logits_real,
                                               logits_fake)

    (_, (hinge, logits_real, logits_fake)), disc_grads = jax.value_and_grad(
        disc_loss_fn, has_aux=True)(disc_params)
    updates, disc_opt_state = disc_tx.update(
        disc_grads, state['disc_opt_state'], disc_params)
    gan_state = {'disc_params': optax.apply_updates(disc_params, updates),
                 'disc_opt_state': disc_opt_state}
    disc_grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in
                                  jax.tree.leaves(disc_grads)))
    measurements = {
        'gan/pixel_loss': pix, 'gan/perceptual_loss': perc,
        'gan/generator_loss': gen, 'gan/adaptive_weight': lam,
        'gan/disc_loss': hinge, 'gan/disc_active': active,
        'gan/logits_real': jnp.mean(logits_real),
        'gan/logits_fake': jnp.mean(logits_fake),
        'gan/disc_grad_norm': disc_grad_norm,
    }
    return loss, new_cols, aux, rec_total, grads, gan_state, measurements

  return grad_fn
