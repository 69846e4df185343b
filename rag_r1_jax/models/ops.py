"""Matmuls whose backward pass is written out so that XLA reads the large operand as stored.

Autodiff transposes `y = x @ w` into `dw = (g^T @ x)^T`: the contraction runs over the batch
and sequence dims, which lead in both `x` [..., in] and `g` [..., out], and XLA:CPU then
copies `g` into a transposed layout first, fusing the elementwise chain that made `g` (a
SwiGLU's backward: four inputs read at a stride of `out` floats) into that copy. Written with
the operand that has fewer columns on the left (the one XLA transposes, a plain array), the
other is read row by row (`experiments/benchmarks/bench_train_step.py` times both; figures in
README.md). Values equal autodiff's; only the order of the operands differs.

`blocked_attention` is attention under the decoder's causal segment mask in tiles with an
online softmax (forward and backward), for sequences whose [t, t] scores must never exist.
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


def causal_mask(seq: int, window: int = 0) -> jax.Array:
  """[seq, seq] bool: query i may attend to key j <= i, with `window` > 0 only to the
  `window` latest of them (j > i - window, HF's sliding window)."""
  i, j = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
  mask = j <= i
  return mask & (j > i - window) if window else mask


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


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                      block_q: int, block_k: int, window: int = 0) -> jax.Array:
  """`attention` under the decoder's causal segment mask, one [block_q, block_k] tile at a time.

  q: [b, t, kv_heads, groups, d]; k, v: [b, t, kv_heads, d]; segment_ids: [b, t] int32 (k > 0:
  a token of the row's k-th example, 0: padding). Query i attends to key j <= i when both are
  of one segment or query i is padding; padding keys are never attended; with `window` > 0
  only keys j > i - window (a sliding window over indices). Returns
  [b, t, kv_heads, groups, d] in q's dtype; a query with no key to attend gets zeros (and
  passes no gradient).

  The forward keeps a running max and sum of exponentials per query row (float32) over the key
  blocks (FlashAttention's online softmax) and saves only q, k, v, the output and each row's
  logsumexp; the backward recomputes each tile's probabilities from them. Only tiles on or below
  the causal diagonal, and before the last key block holding a real token of some row, are
  computed (and, with a window, on or after the first key block it reaches). Every array is q-,
  k- or tile- sized: no [t, t] array exists, forward or back. t need not be a multiple of the
  blocks (the blocks are padded with padding keys).

  Not cuDNN's fused attention (`jax.nn.dot_product_attention(..., implementation="cudnn")`,
  7x faster fwd+bwd on an H200 at t = 8192 with Qwen2.5-7B's heads): its causal mask with
  key/query lengths is this mask exactly for right-padded rows only; packed segments and left
  padding would need a [t, t] mask, and the segment ids do not say statically which they are.
  """
  block_q, block_k = min(block_q, q.shape[1]), min(block_k, q.shape[1])
  out = _blocked_attention(q, k, v, segment_ids.astype(jnp.int32), block_q, block_k, int(window))
  return checkpoint_name(out, ATTENTION_NAME)


def _to_blocks(x, block):
  """[b, t, *heads, d] -> [n, b, *heads, block, d], or [b, t] -> [n, b, block]; t zero-padded
  to n * block."""
  t = x.shape[1]
  pad = -t % block
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape(x.shape[0], (t + pad) // block, block, *x.shape[2:])  # [b, n, block, ..., last]
  if x.ndim == 3:  # segment ids: [n, b, block]
    return jnp.moveaxis(x, 1, 0)
  return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, -2)  # [n, b, ..., block, last]


def _from_blocks(x, t):
  """[n, b, ..., block, d] -> [b, t, ..., d] (the inverse of `_to_blocks`)."""
  x = jnp.moveaxis(jnp.moveaxis(x, -2, 2), 0, 1)  # [b, n, block, ..., d]
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def _tile_mask(seg_q, seg_k, i, j, block_q, block_k, window):
  """[b, 1, 1, block_q, block_k] bool: the decoder's causal segment mask of tile (i, j)."""
  pos_q = i * block_q + jnp.arange(block_q)
  pos_k = j * block_k + jnp.arange(block_k)
  causal = pos_q[:, None] >= pos_k[None, :]
  if window:
    causal &= pos_k[None, :] > pos_q[:, None] - window
  q, k = seg_q[:, :, None], seg_k[:, None, :]
  mask = causal[None] & ((q == k) | (q == 0)) & (k > 0)
  return mask[:, None, None]


def _tile_scores(q_i, k_j, mask):
  """Scaled scores [b, kv, g, block_q, block_k] float32, NEG_INF where masked."""
  s = jnp.einsum("bkgqd,bksd->bkgqs", q_i, k_j.astype(q_i.dtype),
                 preferred_element_type=jnp.float32) / np.sqrt(q_i.shape[-1])
  return jnp.where(mask, s, NEG_INF)


def _key_block_ranges(seg_k, n_q, n_k, block_q, block_k, window):
  """Which tiles can hold an attended pair: query block i reads key blocks [first_k[i],
  need[i]); key block j feeds query blocks [first_q[j], stop_q[j]); all [n] int32. Key blocks
  past the last one holding a real token of some row feed none."""
  real = jnp.any(seg_k > 0, axis=(1, 2))  # [n_k]
  used = jnp.max(jnp.where(real, jnp.arange(n_k) + 1, 0))
  first_pos_q, last_q = jnp.arange(n_q) * block_q, (jnp.arange(n_q) + 1) * block_q - 1
  need = jnp.minimum(last_q // block_k + 1, used)
  first_q = jnp.arange(n_k) * block_k // block_q
  stop_q = jnp.where(jnp.arange(n_k) < used, n_q, first_q)
  first_k = jnp.zeros((n_q,), jnp.int32)
  if window:
    first_k = jnp.maximum(first_pos_q - window + 1, 0) // block_k
    last_pos_k = (jnp.arange(n_k) + 1) * block_k - 1
    stop_q = jnp.minimum(stop_q, (last_pos_k + window - 1) // block_q + 1)
  return first_k, need, first_q, stop_q


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _blocked_attention(q, k, v, segment_ids, block_q, block_k, window):
  return _blocked_fwd(q, k, v, segment_ids, block_q, block_k, window)[0]


def _blocked_fwd(q, k, v, segment_ids, block_q, block_k, window):
  t = q.shape[1]
  qb, seg_q = _to_blocks(q, block_q), _to_blocks(segment_ids, block_q)  # [nq, b, kv, g, bq, d]
  kb, vb = _to_blocks(k, block_k), _to_blocks(v.astype(q.dtype), block_k)  # [nk, b, kv, bk, d]
  seg_k = _to_blocks(segment_ids, block_k)  # [nk, b, bk]
  first_k, need, _, _ = _key_block_ranges(seg_k, qb.shape[0], kb.shape[0], block_q, block_k,
                                          window)

  def query_block(args):
    i, q_i, seg_i = args
    stats = q_i.shape[:-1]  # [b, kv, g, bq]

    def key_block(j, carry):
      top, total, acc = carry
      mask = _tile_mask(seg_i, seg_k[j], i, j, block_q, block_k, window)
      s = _tile_scores(q_i, kb[j], mask)
      new_top = jnp.maximum(top, jnp.max(s, axis=-1))
      e = jnp.exp(s - new_top[..., None])
      scale = jnp.exp(top - new_top)
      acc = scale[..., None] * acc + jnp.einsum("bkgqs,bksd->bkgqd", e.astype(q.dtype), vb[j],
                                                preferred_element_type=jnp.float32)
      return new_top, scale * total + jnp.sum(e, axis=-1), acc

    init = (jnp.full(stats, NEG_INF, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(q_i.shape, jnp.float32))
    top, total, acc = jax.lax.fori_loop(first_k[i], need[i], key_block, init)
    # A row whose max is still NEG_INF saw only masked keys: zeros, and a logsumexp that
    # makes every masked probability exp(NEG_INF - 0) = 0 in the backward.
    seen = top > NEG_INF / 2
    out = jnp.where(seen[..., None], acc / jnp.where(seen, total, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), 0.0)
    return out.astype(q.dtype), lse

  out, lse = jax.lax.map(query_block, (jnp.arange(qb.shape[0]), qb, seg_q))
  out = _from_blocks(out, t)
  return out, (q, k, v, segment_ids, out, lse)


def _blocked_bwd(block_q, block_k, window, res, g):
  q, k, v, segment_ids, out, lse = res  # lse: [nq, b, kv, g, bq] float32
  t, f32 = q.shape[1], jnp.float32
  qb, gb = _to_blocks(q, block_q), _to_blocks(g.astype(q.dtype), block_q)
  # Per query row, the sum over d of g * out (softmax's backward subtracts it from every score).
  delta = jnp.sum(gb.astype(f32) * _to_blocks(out, block_q).astype(f32), axis=-1)
  seg_q = _to_blocks(segment_ids, block_q)
  kb, vb = _to_blocks(k, block_k), _to_blocks(v.astype(q.dtype), block_k)
  seg_k = _to_blocks(segment_ids, block_k)
  _, _, first_q, stop_q = _key_block_ranges(seg_k, qb.shape[0], kb.shape[0], block_q, block_k,
                                            window)
  scale = 1 / np.sqrt(q.shape[-1])

  def key_block(d_q, j):
    k_j, v_j = kb[j], vb[j]

    def query_block(i, carry):
      d_q, d_kt, d_vt = carry  # d_kt, d_vt: [b, kv, d, bk] (the tile-sized operand on the right)
      mask = _tile_mask(seg_q[i], seg_k[j], i, j, block_q, block_k, window)
      p = jnp.exp(_tile_scores(qb[i], k_j, mask) - lse[i][..., None])  # [b, kv, g, bq, bk]
      d_p = jnp.einsum("bkgqd,bksd->bkgqs", gb[i], v_j, preferred_element_type=f32)
      d_s = (p * (d_p - delta[i][..., None]) * scale).astype(q.dtype)
      d_vt = d_vt + jnp.einsum("bkgqd,bkgqs->bkds", gb[i], p.astype(q.dtype),
                               preferred_element_type=f32)
      d_kt = d_kt + jnp.einsum("bkgqd,bkgqs->bkds", qb[i], d_s, preferred_element_type=f32)
      d_q = d_q.at[i].add(jnp.einsum("bkgqs,bksd->bkgqd", d_s, k_j.astype(q.dtype),
                                     preferred_element_type=f32))
      return d_q, d_kt, d_vt

    zeros = jnp.zeros(k_j.shape[:2] + k_j.shape[3:] + k_j.shape[2:3], f32)  # [b, kv, d, bk]
    d_q, d_kt, d_vt = jax.lax.fori_loop(first_q[j], stop_q[j], query_block, (d_q, zeros, zeros))
    return d_q, (d_kt, d_vt)

  d_q, (d_kt, d_vt) = jax.lax.scan(key_block, jnp.zeros(qb.shape, f32), jnp.arange(kb.shape[0]))
  to_bskd = lambda x, like: _from_blocks(jnp.swapaxes(x, -1, -2), t).astype(like.dtype)
  return _from_blocks(d_q, t).astype(q.dtype), to_bskd(d_kt, k), to_bskd(d_vt, v), None


_blocked_attention.defvjp(_blocked_fwd, _blocked_bwd)
