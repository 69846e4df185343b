"""A KV cache with a write position per row, stored as separate blocks of positions.

Rows of a batch sit at different lengths: the sampler appends chunks of different lengths to
different rows (an observation to one, nothing to another). Token j of a row is stored at
cache index j, so a token's cache index is also its rotary position.

Layout: `k[l][j]` (and `v[l][j]`) is one array [batch, kv_heads, block, head_dim] holding
layer l's cache indices [j * block_size, j * block_size + block). Layers have their own
arrays, for a scanned decoder too: a scan that read its layer out of one stacked cache
copied that layer's blocks every decode step (`experiments/benchmarks/bench_decode.py
--scan_layers`, SmolLM2-135M: decode went from 37.3 to 29.2 ms per step at batch 8 and from
131.7 to 124.4 at batch 64 when the cached forward stopped scanning; prefill went the other
way, 197 to 267 ms for 8 x 32 tokens, a smaller share of a rollout). Attention reads
each block it needs whole, in place: reading a prefix out of one [.., capacity, ..] array made
XLA copy the prefix every decode step, which cost about as much as the attention itself.
Heads come before positions so that attention is a matmul batched over (batch, kv head) on the
cache as stored; with positions first XLA transposed every block it read, every step
(`experiments/benchmarks/bench_decode.py`: decode at batch 64 on the 12M config went from
13.5 to 9.4 ms per step, at batch 8 from 3.1 to 2.1).
"""

import flax.struct
import jax
import jax.numpy as jnp

from rag_r1_jax.models.config import DecoderConfig

# Logical axes of every key / value block for the sharding rules.
CACHE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")
# Cache positions per block: attention reads whole blocks, so this is its granularity.
BLOCK_SIZE = 128
# Every layer's attention and cache write unroll over the blocks, so compile time grows with
# layers x blocks: the automatic block size keeps a cache to at most this many blocks.
MAX_AUTO_BLOCKS = 16

Blocks = tuple[jax.Array, ...]  # one layer: [batch, kv_heads, block, head_dim] each


@flax.struct.dataclass
class KVCache:
  k: tuple[Blocks, ...]  # [layer][block]: [batch, kv_heads, block, head_dim]
  v: tuple[Blocks, ...]  # [layer][block]
  lengths: jax.Array  # [batch] int32: tokens written so far in each row

  @property
  def capacity(self) -> int:
    return sum(block.shape[2] for block in self.k[0])

  @property
  def batch_size(self) -> int:
    return self.k[0][0].shape[0]

  def dense(self) -> tuple[jax.Array, jax.Array]:
    """k, v as [layers, batch, capacity, kv_heads, head_dim] (a copy; for tests and debugging)."""
    join = lambda layers: jnp.swapaxes(jnp.stack(
        [jnp.concatenate(blocks, axis=2) for blocks in layers]), 2, 3)
    return join(self.k), join(self.v)


def auto_block_size(capacity: int) -> int:
  """BLOCK_SIZE, or the smallest power of two that covers `capacity` in MAX_AUTO_BLOCKS blocks.

  Capacity 512 or 1024: 128 (4 or 8 blocks); 4096: 256; 8192: 512. Measured on a CPU, 4 layers at
  capacity 8192: decode compiles in 16 s with blocks of 128, 3 s with 512 (the Qwen2.5-7B shape
  on an H100: 168 s with 128). A larger block reads up to block - 1 masked positions per row.
  """
  need = -(-int(capacity) // MAX_AUTO_BLOCKS)
  return max(BLOCK_SIZE, 1 << max(need - 1, 0).bit_length())


def block_sizes(capacity: int, block_size: int = BLOCK_SIZE) -> tuple[int, ...]:
  """Sizes of the blocks covering `capacity` positions (the last one may be shorter)."""
  full, rest = divmod(int(capacity), int(block_size))
  return (block_size,) * full + ((rest,) if rest else ())


def _block_shapes(cfg: DecoderConfig, batch_size: int, capacity: int, block_size: int):
  layer = tuple((batch_size, cfg.num_kv_heads, size, cfg.head_dim)
                for size in block_sizes(capacity, block_size))
  return (layer,) * cfg.num_layers


def init_cache(cfg: DecoderConfig, batch_size: int, capacity: int, dtype=None,
               block_size: int = BLOCK_SIZE) -> KVCache:
  """An empty cache; `dtype` defaults to the model's compute dtype."""
  dtype = dtype or cfg.compute_dtype
  shapes = _block_shapes(cfg, batch_size, capacity, block_size)
  zeros = lambda: tuple(tuple(jnp.zeros(s, dtype) for s in layer) for layer in shapes)
  return KVCache(k=zeros(), v=zeros(), lengths=jnp.zeros((batch_size,), jnp.int32))


def cache_shardings(mesh, cfg: DecoderConfig, batch_size: int, capacity: int,
                    block_size: int = BLOCK_SIZE) -> KVCache:
  """NamedShardings for a cache of this size under the default rules."""
  from rag_r1_jax import sharding  # local import: sharding is a leaf module

  kv = tuple(tuple(sharding.named_sharding(mesh, CACHE_AXES, s) for s in layer)
             for layer in _block_shapes(cfg, batch_size, capacity, block_size))
  return KVCache(k=kv, v=kv, lengths=sharding.named_sharding(mesh, ("batch",), (batch_size,)))


def write(blocks: Blocks, indices: jax.Array, values: jax.Array) -> Blocks:
  """Stores values [batch, chunk, kv, d] at cache indices [batch, chunk] of one layer's blocks.

  An index at or past the capacity is dropped (the chunk padding, a full row).
  """
  rows = jnp.arange(indices.shape[0])[:, None]
  out, start = [], 0
  for block in blocks:
    size = block.shape[2]
    local = indices - start
    local = jnp.where((local >= 0) & (local < size), local, size)  # size: dropped
    # Index arrays around a slice: the indexed dims [batch, chunk] lead, so the update is
    # [batch, chunk, kv, d], the layout of `values`.
    out.append(block.at[rows, :, local].set(values.astype(block.dtype), mode="drop"))
    start += size
  return tuple(out)


def chunk_write_indices(lengths: jax.Array, chunk_lengths: jax.Array, chunk_size: int,
                        capacity: int) -> jax.Array:
  """Cache index of each chunk token [batch, chunk]; padding maps to `capacity` (dropped)."""
  t = jnp.arange(chunk_size, dtype=jnp.int32)[None, :]
  idx = lengths[:, None] + t
  valid = (t < chunk_lengths[:, None]) & (idx < capacity)
  return jnp.where(valid, idx, capacity)


def chunk_attention_mask(lengths: jax.Array, chunk_lengths: jax.Array, chunk_size: int,
                         capacity: int, window: int = 0) -> jax.Array:
  """[batch, chunk, capacity] bool: chunk token t sees cache slots <= its own position, and
  with `window` > 0 only the `window` latest of them (itself included)."""
  q_pos = lengths[:, None] + jnp.arange(chunk_size, dtype=jnp.int32)[None, :]  # [b, t]
  k_pos = jnp.arange(capacity, dtype=jnp.int32)[None, None, :]
  new_len = (lengths + chunk_lengths)[:, None, None]
  mask = (k_pos <= q_pos[:, :, None]) & (k_pos < new_len)
  if window:
    mask &= k_pos > q_pos[:, :, None] - window
  return mask
