"""One Flax NNX decoder for the Llama, Qwen2 / Qwen2.5, Qwen3 (dense) and Mistral families.

RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, optional QKV bias, per-head
query/key RMSNorm (Qwen3), an optional sliding attention window, tied or untied embeddings.
Weights are stored as `[in, out]` kernels. With `scan_layers` the layer weights are stacked
along a leading `layers` axis and a cache-free forward (training, scoring) applies them with
`jax.lax.scan` (fast compiles for deep models); otherwise each layer is its own module. The
cached forward (prefill, decode) never scans: it applies the layers in a Python loop, each with
its own cache blocks, because on XLA:CPU slicing one layer out of a stacked array (cache blocks
or weights) copies it, and a scan did so every decode step. A scanned model's layer weights are
sliced out once per sampler call instead (`layer_weights`, hoisted out of the decode loop): a
transient second copy of them for the call, and the sampler compiles every layer rather than one
(SmolLM2's 30 layers: append and decode still compile in ~4 s each on CPU, as when they
scanned).

With `cfg.lora_rank` > 0 the projections named by `cfg.lora_targets` carry LoRA adapters
(models/lora.py), applied wherever the layer is (scanned, looped, rematerialised); the sampler
and the export run the merged model instead (`params.merge_adapters`).

Two entry modes share the attention code:
  * `cache=None`: a full causal forward over `tokens` with a padding mask or the segment ids of
    packed rows (training, scoring);
  * with a `KVCache`: the chunk `tokens[b, :chunk_lengths[b]]` is appended to row b of the cache
    at that row's own length, and attends to everything before it (prefill and decode alike),
    reading only the cache blocks that hold some row's valid slots.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rag_r1_jax import sharding
from rag_r1_jax.models import kv_cache as kvc
from rag_r1_jax.models import lora
from rag_r1_jax.models import ops
from rag_r1_jax.models import rope
from rag_r1_jax.models.config import DecoderConfig

_INIT_STD = 0.02
_NEG_INF = ops.NEG_INF


def _param(rngs, shape, axes, dtype, stacked, init="normal"):
  if stacked:
    shape, axes = (stacked, *shape), ("layers", *axes)
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype)
  return nnx.Param(value, logical_axes=axes)


class DecoderLayer(nnx.Module):
  """The weights of one layer, or of all layers stacked when `stacked` is the layer count."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, stacked: int = 0):
    d, f, dt = cfg.hidden_size, cfg.intermediate_size, cfg.weight_dtype
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    p = functools.partial(_param, rngs, dtype=dt, stacked=stacked)
    self.attn_norm = p((d,), ("norm",), init="ones")
    self.q_proj = p((d, q), ("embed", "q_heads"))
    self.k_proj = p((d, kv), ("embed", "kv_heads"))
    self.v_proj = p((d, kv), ("embed", "kv_heads"))
    if cfg.qk_norm:
      self.q_norm = p((cfg.head_dim,), ("norm",), init="ones")
      self.k_norm = p((cfg.head_dim,), ("norm",), init="ones")
    if cfg.qkv_bias:
      self.q_bias = p((q,), ("q_heads",), init="zeros")
      self.k_bias = p((kv,), ("kv_heads",), init="zeros")
      self.v_bias = p((kv,), ("kv_heads",), init="zeros")
    self.o_proj = p((q, d), ("q_heads", "embed"))
    if cfg.o_bias:
      self.o_bias = p((d,), ("embed",), init="zeros")
    self.mlp_norm = p((d,), ("norm",), init="ones")
    self.gate_proj = p((d, f), ("embed", "mlp"))
    self.up_proj = p((d, f), ("embed", "mlp"))
    self.down_proj = p((f, d), ("mlp", "embed"))

  def add_adapters(self, cfg: DecoderConfig, rngs: nnx.Rngs) -> None:
    """LoRA factors A [in, r] (uniform) and B [r, out] (zeros) for cfg.lora_projections,
    split over the mesh like the projection's input and output axes."""
    for proj in cfg.lora_projections:
      base = getattr(self, proj)
      *lead, fan_in, fan_out = base.get_value().shape
      *lead_axes, in_axis, out_axis = base.get_metadata()["logical_axes"]
      bound = lora.init_bound(fan_in)
      a = jax.random.uniform(rngs.params(), (*lead, fan_in, cfg.lora_rank), jnp.float32,
                             -bound, bound)
      setattr(self, lora.a_name(proj), lora.LoraParam(
          a.astype(cfg.weight_dtype), logical_axes=(*lead_axes, in_axis, None)))
      setattr(self, lora.b_name(proj), lora.LoraParam(
          jnp.zeros((*lead, cfg.lora_rank, fan_out), cfg.weight_dtype),
          logical_axes=(*lead_axes, None, out_axis)))

  def weights(self) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


class Decoder(nnx.Module):
  """A causal LM: tokens [batch, seq] -> logits [batch, seq, vocab] (float32)."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.weight_dtype
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt, 0)
    if cfg.scan_layers:
      self.layers = DecoderLayer(cfg, rngs=rngs, stacked=cfg.num_layers)
    else:
      self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = _param(rngs, (cfg.hidden_size,), ("norm",), dt, 0, init="ones")
    if not cfg.tie_word_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt, 0)
    if cfg.lora_rank:  # adapters last: a seed's base weights are the same with and without
      for layer in [self.layers] if cfg.scan_layers else self.layers:
        layer.add_adapters(cfg, rngs)

  def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None, cache: kvc.KVCache | None = None,
               chunk_lengths: jax.Array | None = None, logits_at: jax.Array | None = None,
               return_hidden: bool = False, head: jax.Array | None = None,
               layer_weights: list[dict[str, jax.Array]] | None = None):
    """Runs the decoder.

    Args:
      tokens: [batch, seq] int32.
      positions: [batch, seq] int32 rotary positions (no-cache mode; default arange).
      attention_mask: [batch, seq] padding mask, or segment ids of packed rows (no-cache mode;
        default all valid).
      cache: append `tokens` to this cache (cache mode).
      chunk_lengths: [batch] int32 valid tokens per row of the chunk (cache mode; default seq).
      logits_at: [batch] int32; if given, only the logits at these chunk indices: [batch, vocab].
      return_hidden: also return the final normed hidden states [batch, seq, hidden].
      head: `output_head()` computed once by the caller (a decode loop hoists it).
      layer_weights: `layer_weights()` computed once by the caller; read by the cached forward
        and by an unscanned cache-free one (a decode loop hoists it, so a scanned model's
        layers are sliced out once, not every step; a scanned cache-free forward scans).

    Returns:
      (logits, new_cache), plus hidden states if `return_hidden`. new_cache is None without one.
    """
    cfg = self.cfg
    batch, seq = tokens.shape
    inv_freq = jnp.asarray(rope.inverse_frequencies(cfg))
    if cache is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
      if attention_mask is None:
        attention_mask = jnp.ones((batch, seq), jnp.int32)
      # A padding mask (1 real, 0 padding) or, for packed rows, segment ids (k > 0: a token of
      # the row's k-th example, 0: padding): a token attends to earlier tokens of its own
      # segment; a padding token attends to every real token before it.
      segment = attention_mask.astype(jnp.int32)
      if cfg.attention_block and seq > cfg.attention_block:
        mask = None  # ops.blocked_attention builds it tile by tile from `segment`
      else:
        own = (segment[:, :, None] == segment[:, None, :]) | (segment[:, :, None] == 0)
        mask = ops.causal_mask(seq, cfg.sliding_window)[None] & own & (segment[:, None, :] > 0)
      write_idx = attend_from = attend_len = None
    else:
      if chunk_lengths is None:
        chunk_lengths = jnp.full((batch,), seq, jnp.int32)
      positions = cache.lengths[:, None] + jnp.arange(seq, dtype=jnp.int32)[None, :]
      mask = kvc.chunk_attention_mask(cache.lengths, chunk_lengths, seq, cache.capacity,
                                      window=cfg.sliding_window)
      write_idx = kvc.chunk_write_indices(cache.lengths, chunk_lengths, seq, cache.capacity)
      attend_len = jnp.max(jnp.minimum(cache.lengths + chunk_lengths, cache.capacity))
      # The first cache slot any row's window reaches (None: no window).
      attend_from = jnp.maximum(jnp.min(cache.lengths) - cfg.sliding_window + 1, 0) \
          if cfg.sliding_window else None
    x = _constrain_stream(jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype))
    block = functools.partial(_block, cfg=cfg, inv_freq=inv_freq, positions=positions,
                              mask=mask, segment_ids=segment if cache is None else None,
                              write_idx=write_idx, attend_len=attend_len,
                              attend_from=attend_from)
    if cfg.remat == "full":
      block = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)
    elif cfg.remat == "dots":
      block = jax.checkpoint(block, policy=ops.REMAT_DOTS)

    k_layers = list(cache.k) if cache is not None else [None] * cfg.num_layers
    v_layers = list(cache.v) if cache is not None else [None] * cfg.num_layers
    if cfg.scan_layers and cache is None:
      def body(x, weights):
        return block(weights, x, None, None)[0], None
      x, _ = jax.lax.scan(body, x, self.layers.weights())
    else:
      if layer_weights is None:
        layer_weights = self.layer_weights()
      assert len(layer_weights) == cfg.num_layers, (len(layer_weights), cfg.num_layers)
      for i, weights in enumerate(layer_weights):
        x, k_layers[i], v_layers[i] = block(weights, x, k_layers[i], v_layers[i])

    new_cache = None
    if cache is not None:
      new_lengths = jnp.minimum(cache.lengths + chunk_lengths, cache.capacity)
      new_cache = kvc.KVCache(k=tuple(k_layers), v=tuple(v_layers), lengths=new_lengths)

    x = _rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
    hidden = x
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    logits = self.logits(x, head)
    if return_hidden:
      return logits, new_cache, hidden
    return logits, new_cache

  def layer_weights(self) -> list[dict[str, jax.Array]]:
    """Each layer's weights {name: array}; slices of the stacked weights for a scanned model."""
    if not self.cfg.scan_layers:
      return [layer.weights() for layer in self.layers]
    stacked = self.layers.weights()
    return [{k: v[i] for k, v in stacked.items()} for i in range(self.cfg.num_layers)]

  def output_head(self) -> jax.Array:
    """The output projection [hidden, vocab]: lm_head, or the tied embedding transposed."""
    return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

  def logits(self, hidden: jax.Array, head: jax.Array | None = None) -> jax.Array:
    """Projects hidden states [..., hidden] to float32 logits [..., vocab]."""
    head = self.output_head() if head is None else head
    dt = self.cfg.compute_dtype
    if hidden.ndim < 2:
      return ops.matmul(hidden.astype(dt), head.astype(dt), jnp.float32).astype(jnp.float32)
    seq = ("act_seq",) * (hidden.ndim - 2)
    hidden = sharding.constrain(hidden, ("act_mlp_batch", *seq, "act_embed"))
    logits = ops.matmul(hidden.astype(dt), head.astype(dt), jnp.float32).astype(jnp.float32)
    logits = sharding.constrain(logits, ("act_mlp_batch", *seq, "act_mlp_vocab"))
    return sharding.constrain(logits, ("act_batch", *seq, "act_vocab"))


def _constrain_stream(x: jax.Array) -> jax.Array:
  """The residual stream [batch, seq, hidden]: rows over the batch axes, whole on each device."""
  return sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(x.dtype) * x32.astype(x.dtype)


def _linear(x, w, name, scale, b=None):
  """x @ w[name] (+ its LoRA adapter's output when `w` holds one) (+ bias b)."""
  y = ops.matmul(x, w[name].astype(x.dtype))
  if lora.a_name(name) in w:
    y = y + lora.delta(x, w[lora.a_name(name)], w[lora.b_name(name)], scale)
  return y if b is None else y + b.astype(x.dtype)


def _block(w, x, k_blocks, v_blocks, *, cfg, inv_freq, positions, mask, segment_ids,
           write_idx, attend_len, attend_from):
  """One decoder layer; writes this chunk's keys/values into the layer's cache blocks."""
  batch, seq, _ = x.shape
  h = _rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
  heads = lambda y, n: sharding.constrain(  # noqa: E731
      y.reshape(batch, seq, n, cfg.head_dim), ("act_batch", "act_seq", "act_heads", None))
  linear = functools.partial(_linear, scale=cfg.lora_scale)
  q = heads(linear(h, w, "q_proj", b=w.get("q_bias")), cfg.num_heads)
  k = heads(linear(h, w, "k_proj", b=w.get("k_bias")), cfg.num_kv_heads)
  v = heads(linear(h, w, "v_proj", b=w.get("v_bias")), cfg.num_kv_heads)
  if cfg.qk_norm:
    q = _rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
    k = _rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
  q = rope.apply_rope(q, positions, inv_freq)
  k = rope.apply_rope(k, positions, inv_freq)
  if k_blocks is not None:
    k_blocks = kvc.write(k_blocks, write_idx, k)
    v_blocks = kvc.write(v_blocks, write_idx, v)
    attn = _cached_attention(q, k_blocks, v_blocks, mask, attend_len, attend_from, cfg)
  else:
    attn = _attention(q, k, v, mask, segment_ids, cfg)
  x = _constrain_stream(x + linear(attn.reshape(batch, seq, -1), w, "o_proj", b=w.get("o_bias")))
  h = _rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
  h = sharding.constrain(h, ("act_mlp_batch", "act_seq", "act_embed"))
  mlp = jax.nn.silu(linear(h, w, "gate_proj")) * linear(h, w, "up_proj")
  mlp = sharding.constrain(mlp, ("act_mlp_batch", "act_seq", "act_mlp"))
  x = _constrain_stream(x + linear(mlp, w, "down_proj"))
  return x, k_blocks, v_blocks


def _attention(q, k, v, mask, segment_ids, cfg: DecoderConfig):
  """Grouped-query attention over the whole sequence (s = t).

  q: [b, t, heads, d]; k, v: [b, s, kv_heads, d]; mask: [b, t, s] bool, or None for
  `ops.blocked_attention` in blocks of `cfg.attention_block` under the causal mask of
  `segment_ids` [b, t] int32 (never a [t, s] array), within `cfg.sliding_window` if set.
  """
  batch, seq, _, dim = q.shape
  q = q.reshape(batch, seq, cfg.num_kv_heads, cfg.num_groups, dim)
  if mask is None:
    out = ops.blocked_attention(q, k, v, segment_ids, block_q=cfg.attention_block,
                                block_k=cfg.attention_block, window=cfg.sliding_window)
  else:
    out = ops.attention(q, k, v, mask)
  return out.reshape(batch, seq, cfg.num_heads, dim)


def _cached_attention(q, k_blocks, v_blocks, mask, attend_len, attend_from, cfg: DecoderConfig):
  """Attention over the cache blocks that hold some row's valid slots, each read in place.

  q: [b, t, heads, d]; k_blocks, v_blocks: [b, kv_heads, block, d] each; mask
  [b, t, capacity]; attend_len: the largest valid length after this chunk; attend_from: the
  first slot inside some row's sliding window (None: no window). A block starting at or past
  attend_len, or ending at or before attend_from, is skipped by a `lax.cond` (its slots are
  masked for every row), so a short row set reads a short prefix with one compilation. Each
  block read yields its own softmax statistics (max, sum of exponentials, unnormalised output),
  which are rescaled to the overall max and summed at the end. Both products are matmuls batched
  over (row, kv head) on the blocks as stored, for a decode step (t = 1) and a prefill chunk
  alike.
  """
  batch, seq, heads, dim = q.shape
  q = q.reshape(batch, seq, cfg.num_kv_heads, cfg.num_groups, dim)
  score = lambda k: jnp.einsum("btkgd,bksd->bkgts", q, k.astype(q.dtype),
                               preferred_element_type=jnp.float32)
  mix = lambda p, v: jnp.einsum("bkgts,bksd->btkgd", p, v.astype(q.dtype))
  mask = mask[:, None, None]  # [b, 1, 1, t, capacity]
  to_out = lambda stat: jnp.moveaxis(stat, 3, 1)  # [b, kv, g, t, 1] -> [b, t, kv, g, 1]

  def attend(block_mask, k, v):
    scores = jnp.where(block_mask, score(k) / np.sqrt(dim), _NEG_INF)
    top = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - top)
    return top, jnp.sum(e, axis=-1, keepdims=True), mix(e.astype(q.dtype), v)

  stats, start = [], 0
  for k_block, v_block in zip(k_blocks, v_blocks):
    size = k_block.shape[2]
    args = (jax.lax.slice_in_dim(mask, start, start + size, axis=-1), k_block, v_block)
    if start == 0 and attend_from is None:  # always read: every row's sum is then positive
      stats.append(attend(*args))
    else:
      used = start < attend_len
      if attend_from is not None:
        used &= start + size > attend_from
      stats.append(_unless_unused(used, attend, (_NEG_INF, 0, 0), *args))
    start += size
  top = functools.reduce(jnp.maximum, [s[0] for s in stats])
  scale = [jnp.exp(s[0] - top) for s in stats]
  total = functools.reduce(jnp.add, [w * s[1] for w, s in zip(scale, stats)])
  out = functools.reduce(jnp.add, [to_out(w) * s[2] for w, s in zip(scale, stats)])
  # A row whose slots are all masked (chunk padding past a window) has no sum: zeros.
  out = out / jnp.where(to_out(total) > 0, to_out(total), 1.0)
  return out.reshape(batch, seq, heads, dim).astype(q.dtype)


def _unless_unused(used, fn, fills, *args):
  """fn(*args) if `used`, else (fn not run) arrays shaped like its outputs holding `fills`."""
  shapes = jax.eval_shape(fn, *args)
  skip = lambda *_: tuple(jnp.full(x.shape, fill, x.dtype) for x, fill in zip(shapes, fills))
  return jax.lax.cond(used, fn, skip, *args)
