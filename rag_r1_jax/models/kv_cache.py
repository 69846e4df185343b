"""A KV cache with a write position per row.

Rows of a batch sit at different lengths: the sampler appends chunks of different lengths to
different rows (an observation to one, nothing to another). Token j of a row is stored at
cache index j, so a token's cache index is also its rotary position.
"""

import flax.struct
import jax
import jax.numpy as jnp

from rag_r1_jax.models.config import DecoderConfig

# Logical axes of `k` and `v` for the sharding rules.
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [layers, batch, capacity, kv_heads, head_dim]
  v: jax.Array  # [layers, batch, capacity, kv_heads, head_dim]
  lengths: jax.Array  # [batch] int32: tokens written so far in each row

  @property
  def capacity(self) -> int:
    return self.k.shape[2]

  @property
  def batch_size(self) -> int:
    return self.k.shape[1]


def init_cache(cfg: DecoderConfig, batch_size: int, capacity: int,
               dtype=None) -> KVCache:
  """An empty cache; `dtype` defaults to the model's compute dtype."""
  shape = (cfg.num_layers, batch_size, capacity, cfg.num_kv_heads, cfg.head_dim)
  dtype = dtype or cfg.compute_dtype
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 lengths=jnp.zeros((batch_size,), jnp.int32))


def cache_shardings(mesh, cfg: DecoderConfig, batch_size: int, capacity: int) -> KVCache:
  """NamedShardings for a cache of this size under the default rules."""
  from rag_r1_jax import sharding  # local import: sharding is a leaf module

  shape = (cfg.num_layers, batch_size, capacity, cfg.num_kv_heads, cfg.head_dim)
  kv = sharding.named_sharding(mesh, CACHE_AXES, shape)
  return KVCache(k=kv, v=kv, lengths=sharding.named_sharding(mesh, ("batch",), (batch_size,)))


def chunk_write_indices(lengths: jax.Array, chunk_lengths: jax.Array, chunk_size: int,
                        capacity: int) -> jax.Array:
  """Cache index of each chunk token [batch, chunk]; padding maps to `capacity` (dropped)."""
  t = jnp.arange(chunk_size, dtype=jnp.int32)[None, :]
  idx = lengths[:, None] + t
  valid = (t < chunk_lengths[:, None]) & (idx < capacity)
  return jnp.where(valid, idx, capacity)


def chunk_attention_mask(lengths: jax.Array, chunk_lengths: jax.Array, chunk_size: int,
                         capacity: int) -> jax.Array:
  """[batch, chunk, capacity] bool: chunk token t sees cache slots <= its own position."""
  q_pos = lengths[:, None] + jnp.arange(chunk_size, dtype=jnp.int32)[None, :]  # [b, t]
  k_pos = jnp.arange(capacity, dtype=jnp.int32)[None, None, :]
  new_len = (lengths + chunk_lengths)[:, None, None]
  return (k_pos <= q_pos[:, :, None]) & (k_pos < new_len)
