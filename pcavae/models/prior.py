"""A masked-token transformer prior over a bottleneck's symbols (MaskGIT).

The prior models the sequence of symbols a bottleneck sends for one image
(`pcavae.generation.TokenSpace`: the coded symbols in C order, each position
with its own alphabet), as MaskGIT does (Chang et al. 2022,
google-research/maskgit):

* `MaskedTransformer`: a bidirectional pre-LayerNorm transformer. Input: one
  token per position, `mask_id = vocab` where the token is hidden; a learned
  position embedding tells the positions (and so the alphabets) apart.
  Output: logits over `vocab` = the largest alphabet; a position's logits
  beyond its own alphabet are set to `NEG` (`alphabet_logits`), so a symbol
  it cannot send is never predicted or sampled.
* Training (`training_mask`, `masked_loss`): a mask ratio `cos(pi/2 u)`,
  u ~ U(0, 1) per sequence (the cosine schedule), at least one position
  hidden; cross-entropy on the hidden positions only.
* Sampling (`decode`): iterative parallel decoding. Start fully hidden; at
  step t of T sample every hidden position from its logits at
  `temperature`, keep the `L - n_t` most confident (log-probability of the
  sampled symbol plus Gumbel noise scaled by `choice_temperature (1 - t/T)`,
  MaskGIT's annealed randomness) and hide the others again, with
  `n_t = floor(L cos(pi/2 t/T))` still hidden after step t (none after the
  last). Known positions stay fixed.

Everything is float32 (`dtype` sets the transformer's compute dtype; the
logits, the loss and the sampling stay float32).
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# Logit of a symbol outside a position's alphabet.
NEG = -1e9


class MlpBlock(nn.Module):
  dim: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Dense(self.hidden, dtype=self.dtype, name='fc1')(x)
    x = nn.gelu(x)
    return nn.Dense(self.dim, dtype=self.dtype, name='fc2')(x)


class MaskedTransformer(nn.Module):
  """Bidirectional transformer: `(B, L)` tokens (`vocab` = hidden) ->
  `(B, L, vocab)` float32 logits.

  Attributes:
    vocab: the largest alphabet of the sequence's positions.
    length: L, positions per sequence.
    dim: model width.
    depth: transformer blocks.
    heads: attention heads.
    mlp_ratio: MLP hidden width over `dim`.
    dtype: compute dtype of the blocks.
  """
  vocab: int
  length: int
  dim: int = 256
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @property
  def mask_id(self) -> int:
    return self.vocab

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    init = nn.initializers.truncated_normal(0.02)
    x = nn.Embed(self.vocab + 1, self.dim, embedding_init=init,
                 name='token_embed')(tokens)
    pos = self.param('pos_embed', init, (self.length, self.dim))
    x = (x + pos[None]).astype(self.dtype)
    for i in range(self.depth):
      y = nn.LayerNorm(dtype=self.dtype, name=f'block{i}_ln1')(x)
      y = nn.MultiHeadDotProductAttention(
          num_heads=self.heads, dtype=self.dtype, name=f'block{i}_attn')(y, y)
      x = x + y
      y = nn.LayerNorm(dtype=self.dtype, name=f'block{i}_ln2')(x)
      x = x + MlpBlock(self.dim, self.dim * self.mlp_ratio, self.dtype,
                       name=f'block{i}_mlp')(y)
    x = nn.LayerNorm(dtype=jnp.float32, name='final_ln')(x)
    return nn.Dense(self.vocab, dtype=jnp.float32, name='head')(
        x.astype(jnp.float32))


def alphabet_logits(logits: Array, alphabets: Array) -> Array:
  """Logits with every symbol at or beyond a position's alphabet set to
  `NEG` (`alphabets`: `(L,)` int)."""
  valid = jnp.arange(logits.shape[-1]) < jnp.asarray(alphabets)[:, None]
  return jnp.where(valid, logits.astype(jnp.float32), NEG)


def mask_ratio(u: Array) -> Array:
  """The cosine schedule: the share of positions hidden at `u` in [0, 1]
  (1 at u = 0, 0 at u = 1)."""
  return jnp.cos(0.5 * jnp.pi * u)


def training_mask(key: Array, batch: int, length: int) -> Array:
  """`(batch, length)` bool, True = hidden: per sequence a ratio
  `mask_ratio(u)`, u ~ U(0, 1), of its positions (rounded up, at least
  one), chosen uniformly."""
  k_ratio, k_pos = jax.random.split(key)
  ratio = mask_ratio(jax.random.uniform(k_ratio, (batch,)))
  count = jnp.clip(jnp.ceil(ratio * length), 1, length)
  # The `count` smallest of uniform scores: a uniformly random subset.
  scores = jax.random.uniform(k_pos, (batch, length))
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < count[:, None]


def masked_loss(logits: Array, tokens: Array, hidden: Array,
                alphabets: Array) -> Array:
  """Mean cross-entropy (nats) of the true `tokens` at the `hidden`
  positions, under logits restricted to each position's alphabet."""
  logp = jax.nn.log_softmax(alphabet_logits(logits, alphabets), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  weight = hidden.astype(jnp.float32)
  return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def hidden_after(step: Array, num_steps: int, length: int) -> Array:
  """Positions still hidden after decoding step `step` (0-based) of
  `num_steps`: `floor(L cos(pi/2 (step + 1) / T))`, 0 after the last."""
  n = jnp.floor(length * mask_ratio((step + 1) / num_steps))
  return jnp.where(step + 1 >= num_steps, 0, n).astype(jnp.int32)


def decode(logits_fn: Callable[[Array], Array], key: Array, num: int,
           alphabets: Array, num_steps: int, temperature: float = 1.0,
           choice_temperature: float = 4.5,
           mask_id: Optional[int] = None) -> Array:
  """MaskGIT's iterative parallel decoding (module docstring).

  Args:
    logits_fn: `(num, L)` tokens -> `(num, L, vocab)` logits.
    key: PRNG key.
    num: sequences to sample.
    alphabets: `(L,)` alphabet of each position.
    num_steps: T, decoding steps (>= 1).
    temperature: of the symbols' sampling (1 samples the model).
    choice_temperature: scale of the Gumbel noise on the confidences that
      choose which symbols to keep, annealed to 0 over the steps.
    mask_id: the hidden token (default: the model's vocab, `alphabets`' max
      is not enough: pass it).

  Returns:
    `(num, L)` int32 symbols, each in its position's alphabet.
  """
  alphabets = jnp.asarray(alphabets, jnp.int32)
  length = int(alphabets.shape[0])
  if mask_id is None:
    raise ValueError('decode needs the model\'s mask_id.')
  tokens = jnp.full((num, length), mask_id, jnp.int32)

  def body(step, carry):
    tokens, key = carry
    key, k_sample, k_choice = jax.random.split(key, 3)
    hidden = tokens == mask_id
    logits = alphabet_logits(logits_fn(tokens), alphabets)
    logits = logits / jnp.maximum(temperature, 1e-6)
    sampled = jax.random.categorical(k_sample, logits, axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
    sampled = jnp.where(hidden, sampled, tokens)
    noise = jax.random.gumbel(k_choice, chosen.shape)
    anneal = choice_temperature * (1.0 - (step + 1) / num_steps)
    confidence = jnp.where(hidden, chosen + anneal * noise, jnp.inf)
    # Hide again the `n` least confident of the sampled positions.
    n = jnp.minimum(hidden_after(step, num_steps, length),
                    jnp.sum(hidden, -1, keepdims=True) - 1)
    rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
    tokens = jnp.where(rank < n, mask_id, sampled).astype(jnp.int32)
    return tokens, key

  tokens, _ = jax.lax.fori_loop(0, num_steps, body, (tokens, key))
  return tokens


def num_params(params: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def forward_flops(length: int, vocab: int, dim: int, depth: int,
                  mlp_ratio: int = 4) -> int:
  """Multiply-add FLOPs (2 per MAC) of one forward pass of one sequence:
  per block the q/k/v/out projections `4 L d^2`, the attention scores and
  their weighted sum `2 L^2 d`, the MLP `2 r L d^2`; the head `L d V`."""
  macs = depth * (4 * length * dim * dim + 2 * length * length * dim
                  + 2 * mlp_ratio * length * dim * dim)
  macs += length * dim * vocab
  return 2 * macs


def sampling_flops(length: int, vocab: int, dim: int, depth: int,
                   num_steps: int, mlp_ratio: int = 4) -> int:
  """FLOPs of sampling one sequence: `num_steps` forward passes."""
  return num_steps * forward_flops(length, vocab, dim, depth, mlp_ratio)
