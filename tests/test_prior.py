"""The MaskGIT prior's math (`pcavae.models.prior`) and the symbol sequences
of `pcavae.generation.TokenSpace`, against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcavae import generation
from pcavae.models import bottlenecks
from pcavae.models import coding
from pcavae.models import prior


def test_mask_ratio_is_the_cosine_schedule():
  u = np.linspace(0, 1, 11)
  np.testing.assert_allclose(prior.mask_ratio(u), np.cos(np.pi / 2 * u),
                             atol=1e-7)


def test_training_mask_counts_and_mean_ratio():
  length, batch = 40, 4000
  hidden = np.asarray(prior.training_mask(jax.random.PRNGKey(0), batch,
                                          length))
  counts = hidden.sum(1)
  assert counts.min() >= 1 and counts.max() <= length
  # E[ceil(L cos(pi U / 2))] / L = 2/pi + O(1/L): about 0.6366 + 0.0125.
  expected = np.mean(np.clip(np.ceil(
      length * np.cos(np.pi / 2 * (np.arange(100000) + 0.5) / 100000)), 1,
                             length)) / length
  assert abs(counts.mean() / length - expected) < 0.01, counts.mean()
  # The hidden positions are uniform over the sequence.
  per_position = hidden.mean(0)
  assert np.all(np.abs(per_position - per_position.mean()) < 0.04)


def test_masked_loss_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  alphabets = np.array([2, 7, 3, 1, 5])
  tokens = np.array([[1, 6, 2, 0, 4], [0, 0, 0, 0, 0], [1, 3, 1, 0, 2]])
  hidden = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1], [1, 0, 0, 0, 1]],
                    bool)
  nll = []
  for b in range(3):
    for i in range(5):
      if hidden[b, i]:
        z = logits[b, i, :alphabets[i]].astype(np.float64)
        nll.append(np.log(np.sum(np.exp(z))) - z[tokens[b, i]])
  got = prior.masked_loss(jnp.asarray(logits), jnp.asarray(tokens),
                          jnp.asarray(hidden), jnp.asarray(alphabets))
  np.testing.assert_allclose(float(got), np.mean(nll), rtol=1e-5)


def test_decode_schedule_closed_form():
  """A logits function that predicts, at every hidden position, the number
  of positions hidden when it is called: each final symbol says at which
  step its position was fixed, so the counts give the schedule
  floor(L cos(pi/2 (t+1)/T))."""
  length, steps, vocab = 20, 4, 32

  def logits_fn(tokens):
    n = jnp.sum(tokens == vocab, axis=-1)                  # hidden count
    return 50.0 * jax.nn.one_hot(n, vocab)[:, None, :] * jnp.ones(
        (1, length, 1))

  out = np.asarray(prior.decode(logits_fn, jax.random.PRNGKey(1), 3,
                                np.full(length, vocab), steps,
                                mask_id=vocab))
  before = [length]
  for t in range(steps):
    before.append(int(math.floor(length * math.cos(
        math.pi / 2 * (t + 1) / steps))) if t + 1 < steps else 0)
  assert before == [20, 18, 14, 7, 0]
  for row in out:
    for t in range(steps):
      assert np.sum(row == before[t]) == before[t] - before[t + 1], row
  # Traced, the schedule function agrees.
  assert [int(prior.hidden_after(t, steps, length)) for t in range(steps)] \
      == before[1:]


def test_decode_one_step_samples_the_model_within_alphabets():
  """With one step every position is drawn at once from its logits:
  the marginals are the softmax restricted to each alphabet."""
  alphabets = np.array([2, 3, 5])
  base = np.log(np.array([0.5, 0.3, 0.1, 0.07, 0.03]))
  logits_fn = lambda t: jnp.broadcast_to(jnp.asarray(base, jnp.float32),
                                         t.shape + (5,))
  out = np.asarray(prior.decode(logits_fn, jax.random.PRNGKey(0), 20000,
                                alphabets, 1, mask_id=5))
  for i, a in enumerate(alphabets):
    assert out[:, i].max() < a
    p = np.exp(base[:a]) / np.exp(base[:a]).sum()
    freq = np.bincount(out[:, i], minlength=a) / out.shape[0]
    np.testing.assert_allclose(freq, p, atol=0.012)
  # Temperature: logits / T; T -> 0 takes the mode.
  cold = np.asarray(prior.decode(logits_fn, jax.random.PRNGKey(0), 100,
                                 alphabets, 1, temperature=1e-4, mask_id=5))
  assert np.all(cold == 0)


def test_transformer_is_bidirectional_and_flops_match_xla():
  m = prior.MaskedTransformer(vocab=16, length=12, dim=32, depth=2, heads=2)
  t = jnp.zeros((1, 12), jnp.int32)
  params = m.init(jax.random.PRNGKey(0), t)
  a = m.apply(params, t)
  b = m.apply(params, t.at[0, 11].set(5))   # the last token changes
  assert a.shape == (1, 12, 16) and a.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a[0, 0] - b[0, 0]))) > 1e-4   # the first sees it
  cost = jax.jit(m.apply).lower(params, t).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ratio = cost['flops'] / prior.forward_flops(12, 16, 32, 2)
  # The matmuls are all of it but layer norms, softmax and GELU.
  assert 1.0 <= ratio < 1.1, ratio


def _pca_like_coding():
  """A spatial PCA's coding at a water-filled budget: 2x2 locations, Q = 3,
  bits per coefficient (4, 2, 0) at two locations and (3, 1, 1) at two."""
  bits = np.array([[[4, 2, 0], [3, 1, 1]], [[3, 1, 1], [4, 2, 0]]])
  streams = tuple(
      bottlenecks.CodingStream(bits == b, bottlenecks.FIXED, 2 ** b,
                               coding.gaussian_symbol_probabilities(b))
      for b in (1, 2, 3, 4))
  return bits, bottlenecks.Coding(bits.shape, streams, side=bits)


def test_token_space_from_coding_round_trip():
  bits, code = _pca_like_coding()
  space = generation.TokenSpace.from_coding(code)
  # Location by location, components in order, 0-bit coefficients left out.
  want = [2 ** int(b) for b in bits.reshape(-1) if b]
  assert space.alphabets.tolist() == want
  assert space.length == 10 and space.vocab == 16
  assert space.bits_per_image == bits.sum() == 22
  rng = np.random.default_rng(0)
  symbols = rng.integers(0, 2 ** bits, size=(5,) + bits.shape)
  tokens = space.tokens(symbols)
  np.testing.assert_array_equal(tokens[0], symbols[0][bits > 0])
  np.testing.assert_array_equal(space.symbols(tokens), symbols)
  space.check(tokens, 'tokens')
  with pytest.raises(ValueError, match='outside their alphabets'):
    space.check(tokens + 16, 'tokens')
  # Per-bit streams (LFQ, BSQ): every bit a position of alphabet 2.
  bit_space = generation.TokenSpace.from_coding(
      bottlenecks.base.bit_coding(np.zeros((1, 4, 4, 18))))
  assert bit_space.length == 288 and bit_space.bits_per_image == 288


def _constant_rows(n, length, alphabet, seed):
  rng = np.random.default_rng(seed)
  return np.repeat(rng.integers(0, alphabet, (n, 1)), length, 1)


def test_fit_learns_structure_and_resumes_exactly(tmp_path):
  """Sequences whose symbols are all equal: a trained prior samples such
  rows (an untrained one almost never: 4^-7 each), and a run restarted
  from its step-10 checkpoint ends with the parameters of an
  uninterrupted one."""
  length, alphabet = 8, 4
  space = generation.TokenSpace((length,), np.arange(length),
                                np.full(length, alphabet))
  tokens = _constant_rows(256, length, alphabet, 0)
  settings = generation.PriorSettings(size='tiny', steps=150, batch_size=32,
                                      learning_rate=3e-3, warmup_steps=10,
                                      log_every=50, checkpoint_every=150)
  model, params, losses = generation.fit_prior(tokens, space, settings,
                                               str(tmp_path / 'a'))
  assert len(losses) == 150 and np.mean(losses[-20:]) < 0.5 * np.log(4)
  out = np.asarray(prior.decode(
      lambda t: model.apply({'params': params}, t), jax.random.PRNGKey(3),
      200, space.alphabets, 8, mask_id=model.mask_id))
  constant = np.mean(np.all(out == out[:, :1], axis=1))
  assert constant > 0.9, constant
  # Resume: 20 steps with a checkpoint at 10; the one of step 20 lost.
  short = generation.PriorSettings(size='tiny', steps=20, batch_size=8,
                                   warmup_steps=2, checkpoint_every=10)
  _, straight, _ = generation.fit_prior(tokens, space, short,
                                        str(tmp_path / 'b'))
  ckpt = tmp_path / 'c'
  generation.fit_prior(tokens, space, short, str(ckpt))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(ckpt / '20')
  _, resumed, losses = generation.fit_prior(tokens, space, short, str(ckpt))
  assert len(losses) == 10
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               straight, resumed)


def test_prior_settings_errors_name_the_flag():
  with pytest.raises(ValueError, match='--size'):
    generation.PriorSettings(size='huge').check()
  with pytest.raises(ValueError, match='--steps'):
    generation.PriorSettings(steps=0).check()
  with pytest.raises(ValueError, match='--train_images'):
    generation.PriorSettings(train_images=1).check()


def test_token_space_splits_wide_symbols_msb_first():
  """A 14-bit and a 5-bit coefficient with at most 2^6 symbols per token:
  the 14 bits become tokens of 5, 5, 4 bits, most significant first."""
  alphabet = np.array([2 ** 14, 0, 2 ** 5])
  space = generation.TokenSpace.from_alphabets(alphabet, 64)
  assert space.positions.tolist() == [0, 0, 0, 2]
  assert space.alphabets.tolist() == [32, 32, 16, 32]
  assert space.shifts.tolist() == [9, 4, 0, 0]
  assert space.bits_per_image == 19
  symbols = np.array([[0b10110011100101, 0, 17], [2 ** 14 - 1, 0, 0]])
  tokens = space.tokens(symbols)
  assert tokens[0].tolist() == [0b10110, 0b01110, 0b0101, 17]
  np.testing.assert_array_equal(space.symbols(tokens), symbols)
  with pytest.raises(ValueError, match='not a power of two'):
    generation.TokenSpace.from_alphabets(np.array([1000]), 64)
