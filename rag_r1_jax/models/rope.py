"""Rotary position embeddings (the Hugging Face "rotate half" layout) with rope scaling."""

import math

import jax.numpy as jnp
import numpy as np

from rag_r1_jax.models.config import DecoderConfig


def inverse_frequencies(cfg: DecoderConfig) -> np.ndarray:
  """Per-pair rotation frequencies [head_dim // 2], after the config's rope scaling."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  scaling = cfg.rope_scaling_dict
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "linear":
    inv_freq = inv_freq / float(scaling["factor"])
  elif rope_type == "llama3":
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: jnp.ndarray) -> jnp.ndarray:
  """Rotates x: [batch, seq, heads, head_dim] at positions: [batch, seq] int32."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, seq, head_dim/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
