"""Matmuls whose backward pass is written out so that XLA reads the large operand as stored.

Autodiff transposes `y = x @ w` into `dw = (g^T @ x)^T`: the contraction runs over the batch
and sequence dims, which lead in both `x` [..., in] and `g` [..., out], and XLA:CPU then
copies `g` into a transposed layout first, fusing the elementwise chain that made `g` (a
SwiGLU's backward: four inputs read at a stride of `out` floats) into that copy. On the
default config's SFT step (8 x 256 tokens, hidden 128, MLP 384) those four copies took 11.5
ms each of a 262 ms step. Written with the operand that has fewer columns on the left (the
one XLA transposes, a plain array), the other is read row by row; with `attention` below,
the step went from 271 to 163 ms (`experiments/benchmarks/bench_train_step.py`, DEVELOPERS.md
session 13). Values equal autodiff's; only the order of the operands differs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name


# Names of the outputs a "dots" remat policy saves (REMAT_DOTS): a custom_vjp is opaque to
# jax.checkpoint_policies.checkpoint_dots, which would save none of them.
MATMUL_NAME, ATTENTION_NAME = "ops_matmul", "ops_attention"
REMAT_DOTS = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.checkpoint_dots,
    jax.checkpoint_policies.save_only_these_names(MATMUL_NAME, ATTENTION_NAME))


def matmul(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
  """x [..., in] @ w [in, out] -> [..., out], accumulated in (and returned as) `out_dtype`
  (default: the operands' dtype)."""
  return checkpoint_name(_matmul(x, w, out_dtype), MATMUL_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, out_dtype):
  return jnp.dot(x, w, preferred_element_type=out_dtype)


def _matmul_fwd(x, w, out_dtype):
  return _matmul(x, w, out_dtype), (x, w)


def _matmul_bwd(out_dtype, res, g):
  del out_dtype
  x, w = res
  dx = jnp.einsum("...o,io->...i", g, w.astype(g.dtype), preferred_element_type=jnp.float32)
  # The operand with fewer columns goes on the left, where XLA transposes it.
  if x.shape[-1] <= g.shape[-1]:
    dw = jnp.einsum("...i,...o->io", x.astype(g.dtype), g, preferred_element_type=jnp.float32)
  else:
    dw = jnp.einsum("...o,...i->oi", g, x.astype(g.dtype), preferred_element_type=jnp.float32).T
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


# Scores of masked positions (finite: a fully masked row then averages instead of NaN).
NEG_INF = -1e30


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention of grouped queries, with its products ordered for the stored layouts.

  q: [b, t, kv_heads, groups, d]; k, v: [b, s, kv_heads, d]; mask: [b, t, s] bool (True: may
  attend). Returns [b, t, kv_heads, groups, d] in q's dtype; scores and their softmax are
  float32. Every score-sized array ([b, kv, groups, t, s]) is made and read in that layout,
  `s` minor: the q-, k- and v-sized operands are the ones moved to [b, kv, ...] (and back),
  and the key and value gradients are computed as [b, kv, d, s] with the score-sized operand
  on the right. With autodiff's operand order XLA:CPU made transposed copies of the scores'
  softmax and of their gradients, 1-3 ms each per layer in the default config's SFT step.
  """
  return checkpoint_name(_attention(q, k, v, mask), ATTENTION_NAME)


@jax.custom_vjp
def _attention(q, k, v, mask):
  return _attention_fwd(q, k, v, mask)[0]


def _heads_first(x):
  """[b, t, kv, (g,) d] -> [b, kv, (g,) t, d]."""
  return jnp.moveaxis(x, 1, -2)


def _attention_fwd(q, k, v, mask):
  qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v.astype(q.dtype))
  scores = jnp.einsum("bkgtd,bksd->bkgts", qh, kh.astype(q.dtype),
                      preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
  scores = jnp.where(mask[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1)  # [b, kv, g, t, s] float32
  out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(q.dtype), vh)
  return jnp.moveaxis(out, -2, 1), (q, k, v, mask, probs)


def _attention_bwd(res, g):
  q, k, v, mask, probs = res
  f32 = jnp.float32
  qh, kh, vh, gh = (_heads_first(x) for x in (q, k, v, g))
  d_probs = jnp.einsum("bkgtd,bksd->bkgts", gh, vh.astype(g.dtype), preferred_element_type=f32)
  d_v = jnp.einsum("bkgtd,bkgts->bkds", gh, probs.astype(g.dtype), preferred_element_type=f32)
  d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
  d_scores = (jnp.where(mask[:, None, None], d_scores, 0.0) / np.sqrt(q.shape[-1])).astype(q.dtype)
  d_q = jnp.einsum("bkgts,bksd->bkgtd", d_scores, kh.astype(q.dtype), preferred_element_type=f32)
  d_k = jnp.einsum("bkgtd,bkgts->bkds", qh, d_scores, preferred_element_type=f32)
  to_bskd = lambda x, like: jnp.transpose(x, (0, 3, 1, 2)).astype(like.dtype)  # [b, kv, d, s]
  return (jnp.moveaxis(d_q, -2, 1).astype(q.dtype), to_bskd(d_k, k), to_bskd(d_v, v), None)


_attention.defvjp(_attention_fwd, _attention_bwd)


def reference_matmul(x, w, out_dtype=None):
  """`matmul` as autodiff differentiates it (tests and benchmarks compare against it)."""
  return jnp.dot(x, w, preferred_element_type=out_dtype)


def reference_attention(q, k, v, mask):
  """`attention` written plainly, as autodiff differentiates it."""
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
  scores = jnp.where(mask[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(q.dtype))
