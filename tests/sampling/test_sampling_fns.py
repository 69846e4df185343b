"""Greedy token choice and log-probs: equal to jnp.argmax and log_softmax, NaN and inf rows too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rag_r1_jax.sampling import sampling_fns
from rag_r1_jax.sampling.sampling_fns import SamplingParams


def _reference(logits):
  tokens = np.asarray(jnp.argmax(logits, axis=-1))
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  return tokens, logp[np.arange(len(tokens)), tokens]


def test_greedy_equals_argmax_and_log_softmax():
  logits = np.random.RandomState(0).normal(0, 3, (16, 3001)).astype(np.float32)
  logits[2, [7, 900]] = logits[2].max() + 1.0  # a tie across chunks: the first index wins
  logits[5, [300, 301, 2999]] = logits[5].max() + 1.0  # a tie inside a chunk, and in the last
  logits[6, [2999, 3000]] = logits[6].max() + 1.0  # a tie inside the last, partial chunk
  tokens, logprobs = jax.jit(sampling_fns.greedy)(jnp.asarray(logits))
  want_tokens, want_logprobs = _reference(logits)
  assert tokens.dtype == jnp.int32 and tokens[2] == 7 and tokens[5] == 300 and tokens[6] == 2999
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
  np.testing.assert_allclose(np.asarray(logprobs), want_logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", [0, 1234, 2999])
def test_greedy_rows_with_non_finite_logits_match_argmax(bad, column):
  logits = np.random.RandomState(1).normal(0, 3, (4, 3000)).astype(np.float32)
  logits[1, column] = bad
  logits[3, [5, column]] = bad
  tokens, logprobs = jax.jit(sampling_fns.greedy)(jnp.asarray(logits))
  want_tokens, want_logprobs = _reference(logits)
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
  np.testing.assert_allclose(np.asarray(logprobs), want_logprobs, atol=1e-5, rtol=0)


def test_greedy_near_ties_and_tiny_logits_match_argmax():
  # Rows: all zeros (a tie everywhere), a subnormal max at the end (flushed to zero on CPU),
  # two logits one ulp apart near 1e-30 (the later one larger), a max at the last index.
  logits = np.zeros((4, 5000), np.float32)
  logits[1, -1] = np.float32(1e-45)
  logits[2, 10] = np.float32(1e-30)
  logits[2, 20] = np.nextafter(np.float32(1e-30), np.float32(1.0))
  logits[3] = np.random.RandomState(4).normal(0, 1, 5000)
  logits[3, -1] = 10.0
  tokens, logprobs = jax.jit(sampling_fns.greedy)(jnp.asarray(logits))
  want_tokens, want_logprobs = _reference(logits)
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
  np.testing.assert_allclose(np.asarray(logprobs), want_logprobs, atol=1e-5, rtol=0)


def test_sampled_tokens_carry_their_logprob_at_the_sampling_temperature():
  logits = jnp.asarray(np.random.RandomState(2).normal(0, 2, (64, 50)).astype(np.float32))
  params = SamplingParams(temperature=0.7, top_k=10, top_p=0.9)
  fn = jax.jit(lambda l, k: sampling_fns.sample_with_logprob(l, k, params))
  tokens, logprobs = fn(logits, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(tokens),
                                np.asarray(sampling_fns.sample(logits, jax.random.key(3), params)))
  # softmax(logits / 0.7) over the whole vocabulary: top-k / top-p do not renormalise it.
  logp = np.asarray(jax.nn.log_softmax(logits / 0.7, axis=-1))
  np.testing.assert_allclose(np.asarray(logprobs), logp[np.arange(64), np.asarray(tokens)],
                             atol=1e-5, rtol=0)
  top10 = np.argsort(-np.asarray(logits), axis=-1)[:, :10]
  assert all(t in row for t, row in zip(np.asarray(tokens), top10))


def test_temperature_logprob_exact_values_and_greedy_unaffected():
  # logits [0, log 2, log 5]: at temperature 1 p = [1, 2, 5] / 8; at 2, p ~ [1, 2^.5, 5^.5].
  logits = jnp.log(jnp.array([[1.0, 2.0, 5.0]]))
  sharp = SamplingParams(temperature=1e-3)  # draws the argmax, token 2
  tokens, logprobs = sampling_fns.sample_with_logprob(logits, jax.random.key(0), sharp)
  assert int(tokens[0]) == 2 and float(logprobs[0]) == pytest.approx(0.0, abs=1e-6)
  params = SamplingParams(temperature=2.0, top_k=1)  # top-k 1: always token 2
  tokens, logprobs = sampling_fns.sample_with_logprob(logits, jax.random.key(0), params)
  z = 1 + 2 ** 0.5 + 5 ** 0.5
  assert int(tokens[0]) == 2
  assert float(logprobs[0]) == pytest.approx(np.log(5 ** 0.5 / z), rel=1e-6)
  for temperature in (0.5, 1.3):
    greedy = SamplingParams(greedy=True, temperature=temperature)
    tokens, logprobs = sampling_fns.sample_with_logprob(logits, jax.random.key(0), greedy)
    assert int(tokens[0]) == 2 and float(logprobs[0]) == pytest.approx(np.log(5 / 8), rel=1e-6)
