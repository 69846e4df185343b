"""Logit parity of our decoder with the transformers PyTorch implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint
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
