"""ops.matmul and ops.attention: the values and gradients of the plain formulas under autodiff."""

import contextlib
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
