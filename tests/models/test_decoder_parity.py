"""Logit parity of our decoder with the transformers PyTorch implementation (every family, the
cached decode path included), and of its blocked attention with its dense one."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint, kv_cache
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.models.decoder import Decoder
from tests.models.hf_fixtures import tiny_hf_model, torch_logits

SINGLE = ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})


def _mesh():
  return sharding.make_mesh(SINGLE, jax.devices()[:1])


@pytest.mark.parametrize("arch,tied,bias,scan", [
    ("llama", True, False, False),
    ("llama", False, True, True),
    ("qwen2", True, None, True),
    ("qwen2", False, None, False),
])
def test_logits_match_transformers(tmp_path, arch, tied, bias, scan):
  ref = tiny_hf_model(arch, tied, str(tmp_path), bias=bias, layers=3)
  model, cfg = hf_checkpoint.load_hf(str(tmp_path), _mesh(), scan_layers=scan)
  assert cfg.qkv_bias == (arch == "qwen2" or bool(bias))
  assert cfg.tie_word_embeddings == tied
  tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (3, 17))
  ours, _ = model(jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), torch_logits(ref, tokens), atol=1e-4, rtol=0)


# Qwen3: q/k norms, head_dim 24 != hidden / heads; Mistral with and without a window shorter
# than the sequence; blocked attention (tiles of 8) with a window.
@pytest.mark.parametrize("arch,kw,scan,block", [
    ("qwen3", dict(head_dim=24), False, 512),
    ("qwen3", dict(head_dim=24, bias=True, tied=True), True, 8),
    ("mistral", dict(sliding_window=None), True, 512),
    ("mistral", dict(sliding_window=6, head_dim=24), False, 512),
    ("mistral", dict(sliding_window=6), True, 8),
    ("qwen3", dict(sliding_window=5), False, 8),
])
def test_new_families_match_transformers_from_sharded_files(tmp_path, arch, kw, scan, block):
  kw = {"tied": False, **kw}
  ref = tiny_hf_model(arch, out_dir=str(tmp_path), layers=3, max_shard_size="30KB", **kw)
  assert os.path.isfile(tmp_path / hf_checkpoint.INDEX_FILE)
  model, cfg = hf_checkpoint.load_hf(str(tmp_path), _mesh(), scan_layers=scan,
                                     attention_block=block)
  assert (cfg.architecture, cfg.qk_norm) == (arch, arch == "qwen3")
  assert cfg.head_dim == kw.get("head_dim", 16)
  assert cfg.sliding_window == (kw.get("sliding_window") or 0)
  assert cfg.qkv_bias == cfg.o_bias == bool(kw.get("bias"))
  tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 21))
  ours, _ = model(jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), torch_logits(ref, tokens), atol=1e-5, rtol=0)
  if cfg.sliding_window:  # the window is what makes them equal
    unwindowed, _ = hf_checkpoint.load_hf(str(tmp_path), _mesh(), sliding_window=0)
    assert np.abs(np.asarray(unwindowed(jnp.asarray(tokens))[0]) - np.asarray(ours)).max() > 1e-2


def _greedy(model, prompts, steps, block_size):
  """Greedy continuations [rows, steps] of prompts of different lengths through the KV cache."""
  lengths = np.array([len(p) for p in prompts])
  chunk = np.zeros((len(prompts), lengths.max()), np.int32)
  for row, p in enumerate(prompts):
    chunk[row, :len(p)] = p
  cache = kv_cache.init_cache(model.cfg, len(prompts), 40, block_size=block_size)
  logits, cache = model(jnp.asarray(chunk), cache=cache, chunk_lengths=jnp.asarray(lengths),
                        logits_at=jnp.asarray(lengths - 1))
  out = []
  for _ in range(steps):
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    out.append(np.asarray(token))
    logits, cache = model(token[:, None], cache=cache, logits_at=jnp.zeros_like(token))
  return np.stack(out, 1)


@pytest.mark.parametrize("arch,window,scan", [("qwen3", 0, True), ("mistral", 6, False)])
def test_cached_greedy_decode_matches_generate(tmp_path, arch, window, scan):
  ref = tiny_hf_model(arch, False, str(tmp_path), head_dim=24, sliding_window=window or None)
  model, _ = hf_checkpoint.load_hf(str(tmp_path), _mesh(), scan_layers=scan)
  rs = np.random.RandomState(6)
  prompts = [rs.randint(0, 97, 9), rs.randint(0, 97, 4)]
  ours = _greedy(model, prompts, steps=10, block_size=8)
  ref.generation_config.eos_token_id = None  # ten tokens, whatever they are
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      want = ref.generate(torch.as_tensor(prompt)[None], do_sample=False, max_new_tokens=10,
                          pad_token_id=0)[0, len(prompt):].numpy()
    np.testing.assert_array_equal(ours[row], want)


def test_padding_mask_matches_unpadded_rows(tmp_path):
  ref = tiny_hf_model("llama", False, str(tmp_path))
  model, _ = hf_checkpoint.load_hf(str(tmp_path), _mesh())
  tokens = np.random.RandomState(2).randint(0, 97, (2, 12))
  mask = np.ones((2, 12), bool)
  mask[1, 7:] = False  # row 1 is 7 tokens long, right-padded
  ours, _ = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(ours)[1, :7], torch_logits(ref, tokens[1:2, :7])[0],
                             atol=1e-4, rtol=0)


def test_llama3_rope_scaling_matches(tmp_path):
  scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
  ref = tiny_hf_model("llama", True, str(tmp_path), rope_scaling=scaling)
  model, cfg = hf_checkpoint.load_hf(str(tmp_path), _mesh())
  assert cfg.rope_scaling_dict["rope_type"] == "llama3"
  tokens = np.random.RandomState(3).randint(0, 97, (1, 64))
  ours, _ = model(jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), torch_logits(ref, tokens), atol=1e-4, rtol=0)


def test_bfloat16_compute_stays_close(tmp_path):
  ref = tiny_hf_model("qwen2", False, str(tmp_path))
  model, _ = hf_checkpoint.load_hf(str(tmp_path), _mesh(), dtype="bfloat16", param_dtype="bfloat16")
  tokens = np.random.RandomState(4).randint(0, 97, (2, 9))
  ours, _ = model(jnp.asarray(tokens))
  assert ours.dtype == jnp.float32
  expected = torch_logits(ref, tokens)
  assert np.abs(np.asarray(ours) - expected).max() < 0.1 * np.abs(expected).max()
  assert (np.asarray(ours).argmax(-1) == expected.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("scan,remat,window", [(False, "none", 0), (True, "dots", 0),
                                               (False, "none", 6)])
def test_blocked_attention_gives_the_dense_logits_and_gradients(scan, remat, window):
  """With a window of 6 the blocked forward skips key tiles before it and the backward query
  tiles past it."""
  cfg = DecoderConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, scan_layers=scan, remat=remat,
                      attention_block=16, architecture="mistral" if window else "llama",
                      sliding_window=window)
  rs = np.random.RandomState(5)
  tokens = jnp.asarray(rs.randint(0, 61, (2, 40)))
  # Row 0: 29 real tokens, right-padded; row 1: three packed examples, then padding.
  segments = np.zeros((2, 40), np.int32)
  segments[0, :29] = 1
  segments[1, :12], segments[1, 12:27], segments[1, 27:35] = 1, 2, 3
  positions = np.tile(np.arange(40), (2, 1))
  positions[1, 12:27] -= 12
  positions[1, 27:] -= 27
  loss_mask = jnp.asarray((segments > 0) & (rs.rand(2, 40) < 0.7), jnp.float32)
  targets = jnp.asarray(rs.randint(0, 61, (2, 40)))

  def loss_and_grads(block):
    model = Decoder(cfg.replace(attention_block=block), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(params):
      logits, _ = nnx.merge(graphdef, params)(
          tokens, positions=jnp.asarray(positions), attention_mask=jnp.asarray(segments))
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
      return -jnp.sum(lp * loss_mask), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    seq_by_seq = "40,40]" in str(jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(params))
    assert seq_by_seq == (block == 0)  # the blocked path holds no [40, 40] array
    return value, logits, jax.tree.leaves(grads)

  blocked, dense = loss_and_grads(16), loss_and_grads(0)
  np.testing.assert_allclose(blocked[0], dense[0], rtol=1e-5)
  # Without a window every padding query sees some real key, so even the padding logits agree.
  real = segments > 0 if window else np.ones_like(segments, bool)
  np.testing.assert_allclose(blocked[1][real], dense[1][real], rtol=1e-5, atol=1e-5)
  assert len(blocked[2]) == len(dense[2])
  for got, want in zip(blocked[2], dense[2]):
    assert np.abs(np.asarray(want)).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
