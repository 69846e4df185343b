"""ops.matmul, ops.attention and ops.blocked_attention: values and gradients against the plain
formulas under autodiff."""

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from rag_r1_jax.models import ops


@pytest.mark.parametrize("x_shape", [(5, 7), (3, 4, 7), (2, 3, 4, 7)])
def test_matmul_values_and_gradients_equal_jnp_dot(x_shape):
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.normal(size=x_shape).astype(np.float32))
  w = jnp.asarray(rs.normal(size=(7, 6)).astype(np.float32))
  cot = jnp.asarray(rs.normal(size=x_shape[:-1] + (6,)).astype(np.float32))
  loss = lambda f: lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * cot)
  ours = jax.jit(jax.value_and_grad(loss(ops.matmul), argnums=(0, 1)))(x, w)
  want = jax.value_and_grad(loss(ops.reference_matmul), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(ours[0], want[0], rtol=1e-6)
  for got, ref in zip(ours[1], want[1]):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_matmul_bfloat16_operands_with_float32_output():
  rs = np.random.RandomState(1)
  x = jnp.asarray(rs.normal(size=(4, 8)), jnp.bfloat16)
  w = jnp.asarray(rs.normal(size=(8, 3)), jnp.bfloat16)
  y = ops.matmul(x, w, jnp.float32)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, jnp.dot(x, w, preferred_element_type=jnp.float32), rtol=1e-6)
  dx, dw = jax.grad(lambda x, w: ops.matmul(x, w, jnp.float32).sum(), argnums=(0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16  # cotangents keep primal dtypes
  np.testing.assert_allclose(np.asarray(dx, np.float32),
                             np.broadcast_to(np.asarray(w, np.float32).sum(1), (4, 8)), rtol=1e-2)
  np.testing.assert_allclose(np.asarray(dw, np.float32),
                             np.broadcast_to(np.asarray(x, np.float32).sum(0)[:, None], (8, 3)),
                             rtol=1e-2)


def test_matmul_under_remat_and_vmap():
  rs = np.random.RandomState(2)
  x = jnp.asarray(rs.normal(size=(3, 5, 4)).astype(np.float32))
  w = jnp.asarray(rs.normal(size=(4, 2)).astype(np.float32))
  f = lambda x, w: jnp.sum(jax.checkpoint(ops.matmul)(x, w) ** 2)
  g = lambda x, w: jnp.sum(jnp.dot(x, w) ** 2)
  np.testing.assert_allclose(jax.grad(f, 1)(x, w), jax.grad(g, 1)(x, w), rtol=1e-5)
  per_row = jax.vmap(jax.grad(f, 1), in_axes=(0, None))(x, w)
  np.testing.assert_allclose(per_row, jax.vmap(jax.grad(g, 1), in_axes=(0, None))(x, w), rtol=1e-5)


def _attention_inputs(dtype, groups=2):
  rs = np.random.RandomState(3)
  b, t, kv, d = 2, 5, 2, 4
  q = jnp.asarray(rs.normal(size=(b, t, kv, groups, d)), dtype)
  k = jnp.asarray(rs.normal(size=(b, t, kv, d)), dtype)
  v = jnp.asarray(rs.normal(size=(b, t, kv, d)), dtype)
  causal = np.tril(np.ones((t, t), bool))
  mask = np.broadcast_to(causal, (b, t, t)).copy()
  mask[1, :, 3:] = False  # row 1: the last two positions are padding nobody sees
  mask[1, 0, :] = False  # and its first query sees nothing (averages; no NaN)
  cot = jnp.asarray(rs.normal(size=(b, t, kv, groups, d)), dtype)
  return q, k, v, jnp.asarray(mask), cot


@pytest.mark.parametrize("groups", [1, 2])
def test_attention_values_and_gradients_equal_autodiff(groups):
  q, k, v, mask, cot = _attention_inputs(jnp.float32, groups)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, mask) * cot)
  ours = jax.jit(jax.value_and_grad(loss(ops.attention), argnums=(0, 1, 2)))(q, k, v)
  want = jax.value_and_grad(loss(ops.reference_attention), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(ours[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(ops.attention(q, k, v, mask), ops.reference_attention(q, k, v, mask),
                             rtol=1e-6, atol=1e-6)
  for got, ref in zip(ours[1], want[1]):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.abs(np.asarray(ref)).max() > 0.1  # gradients that are not all zero
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_attention_bfloat16_gradients_near_autodiff():
  q, k, v, mask, cot = _attention_inputs(jnp.bfloat16)
  loss = lambda f: lambda q, k, v: jnp.sum((f(q, k, v, mask) * cot).astype(jnp.float32))
  ours = jax.grad(loss(ops.attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(ops.reference_attention), argnums=(0, 1, 2))(q, k, v)
  for got, ref in zip(ours, want):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               rtol=0.05, atol=0.05)


def _saved(fn, *args) -> list[str]:
  """The residuals jax.checkpoint keeps for fn's backward, one description a line."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(fn, *args)
  return out.getvalue().splitlines()


def test_dots_remat_policy_saves_matmul_and_attention_outputs():
  q, k, v, mask, _ = _attention_inputs(jnp.float32)
  w = jnp.ones((4, 4))

  def block(q, k, v, w):
    out = ops.attention(q, k, v, mask)
    return jnp.sum(jnp.tanh(ops.matmul(out, w)))

  saved = _saved(jax.checkpoint(block, policy=ops.REMAT_DOTS), q, k, v, w)
  assert sum(ops.MATMUL_NAME in d for d in saved) == 1
  assert sum(ops.ATTENTION_NAME in d for d in saved) == 1
  full = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)
  assert not any("named" in d for d in _saved(full, q, k, v, w))


def _segment_mask(segment_ids: np.ndarray) -> np.ndarray:
  """The decoder's dense mask [b, t, t] of segment ids [b, t]."""
  t = segment_ids.shape[1]
  q, k = segment_ids[:, :, None], segment_ids[:, None, :]
  return np.tril(np.ones((t, t), bool))[None] & ((q == k) | (q == 0)) & (k > 0)


# Segment ids [2, t] of each case. Right padding: rows of t - 17 and t // 2 + 3 real tokens (the
# last key blocks hold no real token, so they are skipped). Packed: row 0 holds examples of 7
# tokens (the last one longer), then 5 padding tokens; row 1 two examples.
_SEGMENTS = {
    "causal": lambda t: np.ones((2, t), np.int32),
    "right_padding": lambda t: (np.arange(t) < np.array([[t - 17], [t // 2 + 3]])).astype(np.int32),
    "packed": lambda t: np.stack([np.minimum(np.arange(t) // 7 + 1, 4) * (np.arange(t) < t - 5),
                                  np.where(np.arange(t) < 11, 1, 2)]).astype(np.int32),
}


@pytest.mark.parametrize("segments", sorted(_SEGMENTS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("t,block_q,block_k", [(37, 8, 16), (37, 16, 8), (32, 8, 8)])
def test_blocked_attention_equals_reference(segments, groups, t, block_q, block_k):
  rs = np.random.RandomState(4)
  b, kv, d = 2, 2, 8
  q = jnp.asarray(rs.normal(size=(b, t, kv, groups, d)), jnp.float32)
  k = jnp.asarray(rs.normal(size=(b, t, kv, d)), jnp.float32)
  v = jnp.asarray(rs.normal(size=(b, t, kv, d)), jnp.float32)
  segment_ids = _SEGMENTS[segments](t)
  mask = jnp.asarray(_segment_mask(segment_ids))
  # Every query of these rows sees some key, so the two agree at padding positions too; the
  # loss weights padding queries 0, as the losses downstream do.
  weight = jnp.asarray(segment_ids > 0, jnp.float32)[:, :, None, None, None]
  cot = jnp.asarray(rs.normal(size=q.shape), jnp.float32) * weight
  blocked = lambda q, k, v: ops.blocked_attention(q, k, v, jnp.asarray(segment_ids),
                                                  block_q=block_q, block_k=block_k)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * cot)
  ours = jax.jit(jax.value_and_grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
  reference = lambda q, k, v: ops.reference_attention(q, k, v, mask)
  want = jax.value_and_grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(blocked(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[0], want[0], rtol=1e-5)
  for got, ref in zip(ours[1], want[1]):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.abs(np.asarray(ref)).max() > 0.1
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_blocked_attention_queries_with_no_key_give_zeros_and_no_gradient():
  rs = np.random.RandomState(5)
  t = 20
  q = jnp.asarray(rs.normal(size=(1, t, 1, 2, 4)), jnp.float32)
  k = jnp.asarray(rs.normal(size=(1, t, 1, 4)), jnp.float32)
  v = jnp.asarray(rs.normal(size=(1, t, 1, 4)), jnp.float32)
  segment_ids = jnp.asarray((np.arange(t) >= 9)[None], jnp.int32)  # left padding: 9 tokens
  f = lambda q, k, v: ops.blocked_attention(q, k, v, segment_ids, block_q=4, block_k=8)
  out = f(q, k, v)
  assert np.all(np.asarray(out[0, :9]) == 0)
  mask = jnp.asarray(_segment_mask(np.asarray(segment_ids)))
  np.testing.assert_allclose(out[:, 9:], ops.reference_attention(q, k, v, mask)[:, 9:],
                             rtol=1e-5, atol=1e-6)
  # A loss on the keyless queries alone passes no gradient anywhere.
  grads = jax.grad(lambda q, k, v: jnp.sum(f(q, k, v)[:, :9] ** 2 + 1.0), argnums=(0, 1, 2))(
      q, k, v)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g) == 0)


def test_blocked_attention_bfloat16_near_float32():
  rs = np.random.RandomState(6)
  t = 40
  q, k, v = (rs.normal(size=s).astype(np.float32) for s in [(2, t, 2, 2, 8), (2, t, 2, 8),
                                                            (2, t, 2, 8)])
  segment_ids = jnp.asarray(_SEGMENTS["packed"](t))
  f = lambda *x: ops.blocked_attention(*x, segment_ids, block_q=16, block_k=8)
  half = f(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
  assert half.dtype == jnp.bfloat16
  grads = jax.grad(lambda *x: jnp.sum(f(*x).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(
      *(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
  want = jax.grad(lambda *x: jnp.sum(f(*x) ** 2), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(np.asarray(half, np.float32), f(q, k, v), rtol=0.05, atol=0.05)
  for got, ref in zip(grads, want):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=0.1, atol=0.1)


def test_dots_remat_policy_saves_blocked_attention_output():
  q, k, v, _, _ = _attention_inputs(jnp.float32)
  segment_ids = jnp.ones(q.shape[:2], jnp.int32)

  def block(q, k, v):
    return jnp.sum(jnp.tanh(ops.blocked_attention(q, k, v, segment_ids, block_q=2, block_k=2)))

  saved = _saved(jax.checkpoint(block, policy=ops.REMAT_DOTS), q, k, v)
  assert sum(ops.ATTENTION_NAME in d for d in saved) == 1


def test_blocked_attention_never_holds_a_seq_by_seq_array():
  """At t = 2048 the dense forward + backward's temporaries hold [t, t] scores; the blocked one's
  are tile-, q- and k-sized."""
  b, t, kv, groups, d = 1, 2048, 1, 2, 16
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  args = (spec(b, t, kv, groups, d), spec(b, t, kv, d), spec(b, t, kv, d),
          jax.ShapeDtypeStruct((b, t), jnp.int32))

  def grads(attend):
    return lambda q, k, v, seg: jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, seg) ** 2),
                                         argnums=(0, 1, 2))(q, k, v)

  def dense(q, k, v, seg):
    own = (seg[:, :, None] == seg[:, None, :]) | (seg[:, :, None] == 0)
    mask = jnp.tril(jnp.ones((t, t), jnp.bool_))[None] & own & (seg[:, None, :] > 0)
    return ops.attention(q, k, v, mask)

  blocked = functools.partial(ops.blocked_attention, block_q=128, block_k=128)
  temp = {name: jax.jit(grads(f)).lower(*args).compile().memory_analysis().temp_size_in_bytes
          for name, f in (("dense", dense), ("blocked", blocked))}
  scores = b * kv * groups * t * t * 4
  assert temp["dense"] >= scores  # the float32 scores alone
  assert temp["blocked"] < scores / 8
  assert temp["blocked"] < temp["dense"] / 4, temp
