"""Incremental decoding with per-row cache positions equals one full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rag_r1_jax.models import kv_cache, params
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax import sharding
from ml_collections import ConfigDict

CFG = DecoderConfig(vocab_size=61, hidden_size=48, intermediate_size=80, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=12, qkv_bias=True,
                    architecture="qwen2")


def _model(scan: bool, **changes):
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return params.init_on_mesh(CFG.replace(scan_layers=scan, **changes), mesh, seed=3)


@nnx.jit
def _forward(model, tokens, **kwargs):
  """The model's forward, compiled: dispatched op by op, the blocked cache's many small
  operations made these tests minutes long."""
  return model(tokens, **kwargs)


def _full_logits(model, row_tokens):
  logits, _ = _forward(model, jnp.asarray(row_tokens)[None])
  return np.asarray(logits[0])


# Block sizes: one block for the whole cache; several with a shorter last one.
BLOCKS = [kv_cache.BLOCK_SIZE, 5]


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("block_size", BLOCKS)
def test_prefill_then_token_by_token(scan, block_size):
  model = _model(scan)
  tokens = np.random.RandomState(0).randint(0, 61, (2, 14))
  cache = kv_cache.init_cache(model.cfg, 2, 32, block_size=block_size)
  prefill, cache = _forward(model, jnp.asarray(tokens[:, :6]), cache=cache)
  steps = [np.asarray(prefill)]
  for t in range(6, 14):
    logits, cache = _forward(model, jnp.asarray(tokens[:, t:t + 1]), cache=cache)
    steps.append(np.asarray(logits))
  incremental = np.concatenate(steps, axis=1)
  full, _ = _forward(model, jnp.asarray(tokens))
  np.testing.assert_allclose(incremental, np.asarray(full), atol=2e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(cache.lengths), [14, 14])


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("block_size", BLOCKS)
def test_chunks_of_different_lengths_per_row(scan, block_size):
  """Row 0 and row 1 grow by different amounts each call, like a paused/resumed rollout."""
  _check_chunks_of_different_lengths(_model(scan), block_size)


def test_qwen3_sliding_window_chunks_of_different_lengths_per_row(scan=False):
  """Per-head q/k norms and a 4-token window: blocks wholly before every row's window are
  skipped, chunks wider than the window cross it."""
  model = _model(scan, architecture="qwen3", qkv_bias=False, sliding_window=4)
  _check_chunks_of_different_lengths(model, 5)
  full = _full_logits(model, np.arange(12))
  unwindowed = _full_logits(_model(scan, architecture="qwen3", qkv_bias=False), np.arange(12))
  np.testing.assert_allclose(full[:4], unwindowed[:4], atol=2e-5, rtol=0)
  assert np.abs(full[4:] - unwindowed[4:]).max() > 1e-3


def _check_chunks_of_different_lengths(model, block_size):
  rng = np.random.RandomState(1)
  rows = [rng.randint(0, 61, 17), rng.randint(0, 61, 15), rng.randint(0, 61, 11)]
  # chunk lengths per call per row (0 = the row gets nothing this call)
  schedule = [[5, 8, 3], [4, 0, 6], [1, 1, 1], [7, 6, 0], [0, 0, 1]]
  cache = kv_cache.init_cache(model.cfg, 3, 24, block_size=block_size)
  got = [[] for _ in rows]
  offsets = [0, 0, 0]
  for lengths in schedule:
    chunk = np.zeros((3, 8), np.int32)  # one width for every call: one compilation
    for r, n in enumerate(lengths):
      chunk[r, :n] = rows[r][offsets[r]:offsets[r] + n]
    logits, cache = _forward(model, jnp.asarray(chunk), cache=cache,
                             chunk_lengths=jnp.asarray(lengths, jnp.int32))
    for r, n in enumerate(lengths):
      got[r].append(np.asarray(logits[r, :n]))
      offsets[r] += n
  np.testing.assert_array_equal(np.asarray(cache.lengths), offsets)
  # One full forward of the rows padded at the end (causal: padding changes no earlier logit).
  padded = np.zeros((3, max(offsets)), np.int32)
  for r, row in enumerate(rows):
    padded[r, :offsets[r]] = row[:offsets[r]]
  full = np.asarray(_forward(model, jnp.asarray(padded))[0])
  for r in range(len(rows)):
    np.testing.assert_allclose(np.concatenate(got[r]), full[r, :offsets[r]], atol=2e-5, rtol=0)


def test_logits_at_selects_last_valid_position():
  model = _model(False)
  tokens = np.random.RandomState(2).randint(0, 61, (2, 9))
  cache = kv_cache.init_cache(model.cfg, 2, 16)
  lengths = jnp.asarray([9, 4], jnp.int32)
  last, _ = _forward(model, jnp.asarray(tokens), cache=cache, chunk_lengths=lengths,
                   logits_at=lengths - 1)
  assert last.shape == (2, 61)
  np.testing.assert_allclose(np.asarray(last[1]), _full_logits(model, tokens[1, :4])[-1], atol=2e-5)


@pytest.mark.parametrize("block_size", [kv_cache.BLOCK_SIZE, 3])
def test_chunk_past_capacity_is_dropped_not_wrapped(block_size):
  model = _model(False)
  cache = kv_cache.init_cache(model.cfg, 1, 8, block_size=block_size)
  tokens = jnp.asarray(np.arange(12)[None] % 61, jnp.int32)
  _, cache = _forward(model, tokens[:, :6], cache=cache)
  before = np.asarray(cache.dense()[0][:, :, :6])
  _, cache = _forward(model, tokens[:, 6:], cache=cache)  # 6 more tokens, only 2 slots left
  np.testing.assert_array_equal(np.asarray(cache.lengths), [8])
  np.testing.assert_array_equal(np.asarray(cache.dense()[0][:, :, :6]), before)


@pytest.mark.parametrize("scan", [False, True])
def test_block_layout(scan):
  """Blocks of 3 positions over a capacity of 8; token j of row b sits at cache index j.

  Each layer has its own blocks, for a scanned model too (its cached forward loops over layers).
  """
  model = _model(scan)
  cache = kv_cache.init_cache(model.cfg, 2, 8, block_size=3)
  assert [[b.shape for b in g] for g in cache.k] == [
      [(2, 2, size, 12) for size in (3, 3, 2)] for _ in range(2)]
  assert cache.capacity == 8 and cache.batch_size == 2
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, 61, (2, 7)), jnp.int32)
  _, cache = _forward(model, tokens, cache=cache, chunk_lengths=jnp.asarray([7, 2], jnp.int32))
  k, v = cache.dense()
  assert k.shape == v.shape == (2, 2, 8, 2, 12)
  written = np.abs(np.asarray(k)).sum(axis=(0, 3, 4)) > 0  # [batch, capacity]
  np.testing.assert_array_equal(written, [[1] * 7 + [0], [1, 1] + [0] * 6])


@pytest.mark.parametrize("capacity, block", [
    (40, 128), (512, 128), (2048, 128), (2049, 256), (4096, 256), (8192, 512), (8193, 1024)])
def test_auto_block_size_bounds_the_block_count(capacity, block):
  assert kv_cache.auto_block_size(capacity) == block
  assert len(kv_cache.block_sizes(capacity, block)) <= kv_cache.MAX_AUTO_BLOCKS
