"""Shared helpers for the update tests (no tests here): tiny models, configs and batches."""

import jax
import numpy as np
from ml_collections import ConfigDict

from configs import common
from rag_r1_jax import sharding
from rag_r1_jax.models import params
from rag_r1_jax.models.config import DecoderConfig

TINY = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)


def mesh(data: int = 1, fsdp: int = 1, tensor: int = 1):
  """A (data, fsdp, tensor) mesh over the first data*fsdp*tensor devices."""
  n = data * fsdp * tensor
  return sharding.make_mesh(ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}),
                            jax.devices()[:n])


def model(mesh_, cfg: DecoderConfig = TINY, seed: int = 0):
  return params.init_on_mesh(cfg, mesh_, seed)


def rl_config(**rl) -> ConfigDict:
  """The base config with small RL sizes; keyword arguments override config.rl fields."""
  c = common.base_config()
  c.rl.update(dict(batch_size=4, mini_batch_size=4, group_size=4, steps=10, warmup_ratio=0.0,
                   learning_rate=1e-3, critic_learning_rate=1e-3, epochs_per_batch=1))
  c.rl.update(rl)
  return c


def trajectory_batch(rows: int, seq: int, vocab: int, seed: int = 0, group_size: int = 4,
                     prompt: int = 4) -> dict[str, np.ndarray]:
  """A random right-padded rollout batch: prompt, response with an information block, padding."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (rows, seq)).astype(np.int32)
  lengths = rng.integers(prompt + 6, seq + 1, rows)
  attention = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  loss_mask = attention.astype(np.float32)
  loss_mask[:, :prompt] = 0
  loss_mask[:, prompt + 2:prompt + 4] = 0  # retrieved tokens inside the response
  tokens = tokens * attention
  return {
      "tokens": tokens,
      "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy(),
      "attention_mask": attention,
      "loss_mask": loss_mask,
      "sampler_logprobs": (-rng.uniform(0.5, 5.0, (rows, seq)) * loss_mask).astype(np.float32),
      "rewards": rng.integers(0, 2, rows).astype(np.float32),
      "group_ids": (np.arange(rows) // group_size).astype(np.int32),
  }


def without_timing(metrics: dict) -> dict:
  """The metrics a seeded step determines: all but its wall-clock `*_seconds`."""
  return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}
