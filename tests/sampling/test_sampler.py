"""Sampler decode over a cache split into small blocks equals the teacher-forced forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import params
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import toy_tokenizer

CAPACITY, NEW = 40, 20
PROMPT_LENGTHS = [3, 9, 14, 30]  # the last row fills the cache after 10 tokens


def _model(tokenizer, scan: bool):
  cfg = DecoderConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True,
                      architecture="qwen2", scan_layers=scan)
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return params.init_on_mesh(cfg, mesh, seed=5)


def _decode(model, tokenizer, block_size, sampling=SamplingParams(greedy=True)):
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=CAPACITY, stop_strings_=("\x00",),
                                block_size=block_size)
  rng = np.random.RandomState(6)
  prompts = [rng.randint(1, len(tokenizer), n).tolist() for n in PROMPT_LENGTHS]
  state = sampler.append(sampler.init(len(prompts), jax.random.key(7)), prompts)
  state = sampler.decode(state, sampler_lib.DecodeSettings(sampling, NEW))
  return sampler.fetch(state)


@pytest.mark.parametrize("scan", [False, True])
def test_block_decode_equals_teacher_forced_forward(scan):
  tokenizer = toy_tokenizer()
  model = _model(tokenizer, scan)
  out = _decode(model, tokenizer, block_size=4)
  np.testing.assert_array_equal(out["lengths"], [n + NEW for n in PROMPT_LENGTHS[:3]] + [CAPACITY])
  np.testing.assert_array_equal(out["status"], [sampler_lib.TURN_LIMIT] * 3 + [sampler_lib.LENGTH])
  for b, n in enumerate(PROMPT_LENGTHS):
    length = out["lengths"][b]
    tokens = out["tokens"][b, :length]
    logits, _ = model(jnp.asarray(tokens)[None])
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    np.testing.assert_array_equal(np.nonzero(out["generated"][b])[0], np.arange(n, length))
    np.testing.assert_array_equal(tokens[n:], logp[n - 1:length - 1].argmax(-1))
    np.testing.assert_allclose(out["logprobs"][b, n:length],
                               logp[np.arange(n - 1, length - 1), tokens[n:]], atol=1e-5, rtol=0)
  one_block = _decode(model, tokenizer, block_size=CAPACITY)
  np.testing.assert_array_equal(out["tokens"], one_block["tokens"])
  np.testing.assert_allclose(out["logprobs"], one_block["logprobs"], atol=1e-6, rtol=0)


def test_random_sampling_does_not_depend_on_the_block_size():
  tokenizer = toy_tokenizer()
  model = _model(tokenizer, scan=False)
  sampling = SamplingParams(temperature=1.0, top_k=20)
  small, whole = (_decode(model, tokenizer, size, sampling) for size in (4, CAPACITY))
  np.testing.assert_array_equal(small["tokens"], whole["tokens"])
  np.testing.assert_allclose(small["logprobs"], whole["logprobs"], atol=1e-6, rtol=0)
  assert len(np.unique(small["tokens"][0, 3:23])) > 5  # actually sampled, not greedy


def test_bucket_widths_multiples_of_16_then_two_per_octave():
  widths = [sampler_lib.bucket(n) for n in (0, 1, 16, 17, 33, 61, 65, 75, 97, 128, 129, 193, 385)]
  assert widths == [16, 16, 16, 32, 48, 64, 80, 80, 112, 128, 192, 256, 512]
  for n in range(1, 4097):
    width = sampler_lib.bucket(n)
    assert n <= width and (width - n < 16 if n <= 128 else 3 * (width - n) < width), (n, width)
  assert len({sampler_lib.bucket(n) for n in range(1, 4097)}) == 18  # 16..128, 192, ..., 4096


def test_block_size_defaults_to_the_automatic_one():
  tokenizer = toy_tokenizer()
  model = _model(tokenizer, scan=False)
  for capacity, block in ((CAPACITY, 128), (8192, 512)):
    sampler = sampler_lib.Sampler(model, tokenizer, capacity=capacity)
    assert sampler.block_size == block
  assert jax.eval_shape(lambda: sampler.init(2, jax.random.key(0))).cache.k[0][0].shape[2] == 512
