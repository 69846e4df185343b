"""Logit parity of our decoder with the transformers PyTorch implementation, and of its blocked
attention with its dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint
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


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "dots")])
def test_blocked_attention_gives_the_dense_logits_and_gradients(scan, remat):
  cfg = DecoderConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, scan_layers=scan, remat=remat,
                      attention_block=16)
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
  # Every padding query sees some real key, so even the padding logits agree.
  np.testing.assert_allclose(blocked[1], dense[1], rtol=1e-5, atol=1e-5)
  assert len(blocked[2]) == len(dense[2])
  for got, want in zip(blocked[2], dense[2]):
    assert np.abs(np.asarray(want)).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
