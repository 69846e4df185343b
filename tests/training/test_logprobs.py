"""token_logprobs: shifted alignment, equality with a naive log_softmax, chunking, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rag_r1_jax.rl import losses
from rag_r1_jax.training import logprobs
from tests.training import test_update_common as h


def _naive(model, batch, temperature=1.0):
  """log_softmax(logits / temperature) over the vocabulary, gathered and shifted by hand."""
  logits = jax.jit(lambda b: model(b["tokens"], positions=b["positions"],
                                   attention_mask=b["attention_mask"])[0])(
                                       {k: jnp.asarray(v) for k, v in batch.items()})
  logits = logits / temperature
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  tokens = batch["tokens"]
  rows, seq = tokens.shape
  expected = np.zeros((rows, seq), np.float32)
  for b in range(rows):
    for t in range(1, seq):
      expected[b, t] = logp[b, t - 1, tokens[b, t]]
  ones = jnp.ones((rows, seq - 1))
  entropy = np.zeros((rows, seq), np.float32)
  entropy[:, 1:] = np.asarray(losses.entropy_from_logits(logits[:, :-1], ones))
  return expected, entropy


@pytest.mark.parametrize("chunk", [0, 5, 16])
def test_matches_naive_log_softmax(chunk):
  model = h.model(h.mesh())
  batch = h.trajectory_batch(3, 13, h.TINY.vocab_size, seed=1)
  expected, expected_entropy = _naive(model, batch)
  lp, ent = jax.jit(lambda b: logprobs.token_logprobs(model, b, chunk))(
      {k: jnp.asarray(v) for k, v in batch.items()})
  assert lp.dtype == jnp.float32 and lp.shape == (3, 13)
  np.testing.assert_array_equal(np.asarray(lp[:, 0]), 0.0)
  np.testing.assert_allclose(np.asarray(lp), expected, atol=2e-6)
  np.testing.assert_allclose(np.asarray(ent), expected_entropy, atol=2e-5)
  # A uniform-ish random model: entropies close to log(vocab).
  assert abs(float(ent[:, 1:].mean()) - np.log(h.TINY.vocab_size)) < 0.05


@pytest.mark.parametrize("chunk", [0, 5])
def test_temperature_divides_the_logits(chunk):
  model = h.model(h.mesh())
  batch = h.trajectory_batch(3, 13, h.TINY.vocab_size, seed=1)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  expected, expected_entropy = _naive(model, batch, temperature=1.3)
  lp, ent = jax.jit(lambda b: logprobs.token_logprobs(model, b, chunk, temperature=1.3))(jb)
  np.testing.assert_allclose(np.asarray(lp), expected, atol=2e-6)
  np.testing.assert_allclose(np.asarray(ent), expected_entropy, atol=2e-5)
  at_one, _ = jax.jit(lambda b: logprobs.token_logprobs(model, b, chunk))(jb)
  assert np.abs(np.asarray(lp) - np.asarray(at_one))[:, 1:].min() > 1e-4
  # One position by hand: logits [0, log 3] at temperature 2 give p = [1, 3^.5] / (1 + 3^.5).
  lp1, ent1 = logprobs.logprobs_from_logits(jnp.log(jnp.array([[1.0, 3.0]])), jnp.array([1]),
                                            temperature=2.0)
  p = np.array([1.0, 3 ** 0.5]) / (1 + 3 ** 0.5)
  assert float(lp1[0]) == pytest.approx(np.log(p[1]), rel=1e-6)
  assert float(ent1[0]) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)


def test_chunked_gradient_equals_direct():
  model = h.model(h.mesh())
  batch = {k: jnp.asarray(v) for k, v in h.trajectory_batch(2, 11, 64, seed=2).items()}
  graphdef, state = nnx.split(model)

  def loss(state, chunk):
    lp, ent = logprobs.token_logprobs(nnx.merge(graphdef, state), batch, chunk)
    return (lp * batch["loss_mask"]).sum() + 0.1 * ent.sum()

  g0 = jax.jit(jax.grad(lambda s: loss(s, 0)))(state)
  g4 = jax.jit(jax.grad(lambda s: loss(s, 4)))(state)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g4)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_bfloat16_compute_stays_close_and_float32():
  batch = h.trajectory_batch(2, 12, 64, seed=3)
  f32 = h.model(h.mesh())
  bf16 = h.model(h.mesh(), h.TINY.replace(dtype="bfloat16"))
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  lp32, _ = jax.jit(lambda b: logprobs.token_logprobs(f32, b))(jb)
  lp16, ent16 = jax.jit(lambda b: logprobs.token_logprobs(bf16, b))(jb)
  assert lp16.dtype == jnp.float32 and ent16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(lp16), np.asarray(lp32), atol=0.05)


def test_shift_values():
  v = jnp.arange(8, dtype=jnp.float32).reshape(2, 4)
  np.testing.assert_array_equal(np.asarray(logprobs.shift_values(v)),
                                [[0, 0, 1, 2], [0, 4, 5, 6]])
