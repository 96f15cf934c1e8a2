"""Pure loss functions."""

import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def mse(x: Array, y: Array) -> Array:
  """Mean squared error over every element (the reference's loss)."""
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def l1(x: Array, y: Array) -> Array:
  """Mean absolute error over every element."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


RECONSTRUCTION = {'mse': mse, 'l1': l1}
# `config.loss.reconstruction`: a key of RECONSTRUCTION, or 'auto'.
RECONSTRUCTION_CHOICES = tuple(RECONSTRUCTION) + ('auto',)


def reconstruction_name(reconstruction: str, objective: str) -> str:
  """`config.loss.reconstruction` resolved against `config.loss.kind`.

  'auto' is each objective's authors' pixel loss: L1 under the VQGAN
  objective (taming-transformers), MSE under the plain reconstruction
  objective (the PCA-VAE reference); any other name is returned as is.

  Args:
    reconstruction: 'mse', 'l1' or 'auto'.
    objective: `config.loss.kind`, 'reconstruction' or 'vqgan'.

  Returns:
    A key of `RECONSTRUCTION`.
  """
  if reconstruction != 'auto':
    return reconstruction
  return 'l1' if objective == 'vqgan' else 'mse'


# `config.loss.kl_normalization` (KL bottleneck only).
KL_NORMALIZATIONS = ('ldm', 'none')


def kl_loss_scale(image_shape: Sequence[int], normalization: str = 'ldm'
                  ) -> float:
  """The factor on a per-image KL term that puts it in latent-diffusion units.

  latent-diffusion (`LPIPSWithDiscriminator`, contperceptual.py) adds
  `kl_weight * sum(KL) / B` (summed over latent elements) to
  `sum(rec) / B` (summed over pixels and channels). The reconstruction loss
  here is a mean over elements, i.e. LDM's divided by `H * W * C`, so the KL
  term `kl_weight * KL_per_image` must be divided by the same number for the
  two to stand in LDM's ratio: with 'ldm', `kl_weight = 1e-6` regularises as
  it does in latent diffusion at every resolution. 'none' keeps the KL term
  as is (`H * W * C` times LDM's weight: what this trainer did before).

  Args:
    image_shape: `(B, H, W, C)` of the images the reconstruction loss sees.
    normalization: one of `KL_NORMALIZATIONS`.

  Returns:
    `1 / (H * W * C)` for 'ldm', 1 for 'none'.
  """
  if normalization == 'ldm':
    return 1.0 / math.prod(image_shape[1:])
  if normalization == 'none':
    return 1.0
  raise ValueError(f'config.loss.kl_normalization={normalization!r}; choose '
                   f'one of {KL_NORMALIZATIONS}.')


# ---------------------------------------------------------------------------
# Quantizer losses (used by pcavae/models/bottlenecks/).
# ---------------------------------------------------------------------------


def vq_loss(z: Array, e: Array, beta: float = 0.25,
            legacy_beta: bool = False) -> Tuple[Array, Array, Array]:
  """VQ-VAE codebook + commitment loss (van den Oord et al. 2017).

  `||sg(z) - e||^2 + beta ||z - sg(e)||^2` (means over every element). With
  `legacy_beta=True` beta weights the codebook term instead,
  `beta ||sg(z) - e||^2 + ||z - sg(e)||^2`: what taming-transformers'
  `VectorQuantizer2(legacy=True)` (its default, used by VQGAN) computes.

  Args:
    z: encoder outputs.
    e: the selected codes, same shape as `z`.
    beta: commitment weight.
    legacy_beta: put `beta` on the codebook term (taming's default).

  Returns:
    `(loss, codebook_term, commitment_term)`, the terms unweighted.
  """
  z = z.astype(jnp.float32)
  e = e.astype(jnp.float32)
  codebook = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e))
  commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
  if legacy_beta:
    loss = beta * codebook + commitment
  else:
    loss = codebook + beta * commitment
  return loss, codebook, commitment


def entropy(probs: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """Shannon entropy in nats along `axis`."""
  return -jnp.sum(probs * jnp.log(jnp.maximum(probs, eps)), axis=axis)


def lfq_entropy_terms(z: Array, codebook: Array, inv_temperature: float = 100.0
                      ) -> Tuple[Array, Array]:
  """The two entropies of LFQ's entropy loss (MAGVIT-v2, Yu et al. 2023).

  Soft assignments `p(c | z) = softmax_c(2 <z, c> * inv_temperature)` (the
  softmax of minus the squared distance to each code: `||z||^2` and
  `||c||^2 = d` are the same for every code and cancel).

  Args:
    z: `(n, d)` continuous inputs of the quantizer.
    codebook: `(K, d)` every code (for LFQ, all `2^d` sign vectors).
    inv_temperature: sharpness of the soft assignment.

  Returns:
    `(per_sample_entropy, batch_entropy)`: the mean over samples of the
    entropy of `p(. | z)` (low when each sample is confidently assigned) and
    the entropy of the batch-mean assignment (high when codes are used
    evenly). The LFQ loss is `per_sample_entropy - batch_entropy`.
  """
  logits = 2.0 * jnp.einsum('nd,kd->nk', z.astype(jnp.float32),
                            codebook.astype(jnp.float32)) * inv_temperature
  probs = jax.nn.softmax(logits, axis=-1)
  per_sample = jnp.mean(entropy(probs))
  batch = entropy(jnp.mean(probs, axis=0))
  return per_sample, batch


def bit_entropy_terms(logits: Array) -> Tuple[Array, Array]:
  """The two entropies of a binary code's entropy loss, factorised per bit.

  For codes that are products of independent bits (LFQ's signs, BSQ's
  signs on the sphere) the soft assignment `softmax_c(-tau ||z - c||^2)`
  factorises exactly: bit i is 1 with probability `sigmoid(logits_i)`
  (`logits = 4 tau z` for LFQ's +-1 codes, `4 tau z / sqrt(d)` for BSQ's
  +-1/sqrt(d)). The per-sample entropy is then the sum of the bits'
  entropies, exactly; the batch entropy is approximated by the sum of the
  entropies of each bit's batch-mean probability (BSQ, Zhao et al. 2024,
  Sec. 3.3; an upper bound on the joint). Nothing of size 2^d is formed.

  Args:
    logits: `(n, d)` logits of each bit being 1.

  Returns:
    `(per_sample_entropy, batch_entropy)` in nats, as `lfq_entropy_terms`.
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  two = lambda q: jnp.stack([q, 1.0 - q], axis=-1)
  per_sample = jnp.mean(jnp.sum(entropy(two(p)), axis=-1))
  batch = jnp.sum(entropy(two(jnp.mean(p, axis=0))))
  return per_sample, batch


def gaussian_kl(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)), summed per example, batch-mean.

  The closed form `0.5 * sum(mean^2 + var - 1 - logvar)` over every
  non-batch axis, averaged over the batch, as latent-diffusion's
  `DiagonalGaussianDistribution.kl` and `LPIPSWithDiscriminator` use it
  (`kl_loss_scale` puts it against a per-element reconstruction loss).
  """
  mean = mean.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  axes = tuple(range(1, mean.ndim))
  kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar,
                     axis=axes)
  return jnp.mean(kl)


# ---------------------------------------------------------------------------
# The VQGAN objective (Esser et al. 2021; taming-transformers'
# `VQLPIPSWithDiscriminator` with its hinge loss).
# ---------------------------------------------------------------------------


def hinge_disc_loss(logits_real: Array, logits_fake: Array) -> Array:
  """`0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))`."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
                + jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32))))


def generator_loss(logits_fake: Array) -> Array:
  """The generator's adversarial loss `-mean D(x_hat)`."""
  return -jnp.mean(logits_fake.astype(jnp.float32))


def adaptive_weight(rec_grad: Array, gen_grad: Array, disc_weight: float = 1.0,
                    max_weight: float = 1e4, eps: float = 1e-4) -> Array:
  """VQGAN's balance of the adversarial term against reconstruction.

  `lambda = clip(||grad_last L_rec|| / (||grad_last L_G|| + eps), 0, max) *
  disc_weight`, with both gradients taken w.r.t. the decoder's last layer
  kernel. Gradient-stopped: lambda is a weight, not a path for gradients.

  Args:
    rec_grad: d L_rec / d W_last.
    gen_grad: d L_G / d W_last.
    disc_weight: the configured discriminator weight.
    max_weight: upper clip (taming: 1e4).
    eps: added to the denominator (taming: 1e-4).

  Returns:
    A scalar float32 weight.
  """
  rec_norm = jnp.sqrt(jnp.sum(jnp.square(rec_grad.astype(jnp.float32))))
  gen_norm = jnp.sqrt(jnp.sum(jnp.square(gen_grad.astype(jnp.float32))))
  w = jnp.clip(rec_norm / (gen_norm + eps), 0.0, max_weight)
  return jax.lax.stop_gradient(w * disc_weight)
