"""Sampler decode over a cache split into small blocks equals the teacher-forced forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from rag_r1_jax import sharding, timing
from rag_r1_jax.models import params
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import toy_tokenizer

CAPACITY, NEW = 40, 20
PROMPT_LENGTHS = [3, 9, 14, 30]  # the last row fills the cache after 10 tokens


def _model(tokenizer, scan: bool, seed: int = 5):
  cfg = DecoderConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True,
                      architecture="qwen2", scan_layers=scan)
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return params.init_on_mesh(cfg, mesh, seed=seed)


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


def _sampler(model, tokenizer, capacity=CAPACITY):
  return sampler_lib.Sampler(model, tokenizer, capacity=capacity, stop_strings_=("\x00",),
                             block_size=8)


def _prompts(tokenizer):
  rng = np.random.RandomState(6)
  return [rng.randint(1, len(tokenizer), n).tolist() for n in PROMPT_LENGTHS]


def _sampler_and_whole_decode(sampling):
  """A toy sampler, its tokenizer, and the four prompts decoded NEW steps in one call."""
  tokenizer = toy_tokenizer()
  sampler = _sampler(_model(tokenizer, scan=False), tokenizer)
  whole = sampler.fetch(sampler.decode(
      sampler.append(sampler.init(4, jax.random.key(7)), _prompts(tokenizer)),
      sampler_lib.DecodeSettings(sampling, NEW)))
  return sampler, tokenizer, whole


@pytest.mark.parametrize("sampling", [SamplingParams(greedy=True),
                                      SamplingParams(temperature=1.0, top_k=20)])
def test_decode_in_chunks_equals_one_call(sampling):
  """A decode that returns every few steps, rows mid-turn resuming from their pending token,
  writes the same tokens and log-probs (random sampling too: the key is split per step alike)
  and ends the same rows with the same statuses."""
  sampler, tokenizer, whole = _sampler_and_whole_decode(sampling)
  compiled = compile_count_of(sampler)
  state = sampler.append(sampler.init(4, jax.random.key(7)), _prompts(tokenizer))
  chunked = sampler_lib.DecodeSettings(sampling, NEW, chunk_steps=3)
  calls = 0
  while np.any(np.asarray(state.status) == sampler_lib.RUNNING):
    state = sampler.decode(state, chunked)
    calls += 1
    running = np.asarray(state.status) == sampler_lib.RUNNING
    np.testing.assert_array_equal(np.asarray(state.resume_pending), running)
  assert calls == -(-NEW // 3)  # 20 tokens in calls of at most 3 steps
  out = sampler.fetch(state)
  for key in ("tokens", "generated", "status", "lengths", "stop_index"):
    np.testing.assert_array_equal(out[key], whole[key], err_msg=key)
  np.testing.assert_allclose(out["logprobs"], whole["logprobs"], atol=1e-6, rtol=0)
  assert compiled_since(compiled, sampler)["_decode"] <= 1  # one per DecodeSettings


@pytest.mark.parametrize("sampling", [SamplingParams(greedy=True),
                                      SamplingParams(temperature=1.0, top_k=20)])
def test_decode_returns_at_a_stop_or_its_step_bound(sampling):
  """`stop_after` ends a call once that many of its running rows have stopped and `max_steps`
  bounds its steps (both traced: one compilation); resumed to the end, the rows' tokens,
  log-probs and statuses equal one whole decode's."""
  sampler, tokenizer, whole = _sampler_and_whole_decode(sampling)
  compiled = compile_count_of(sampler)
  chunked = sampler_lib.DecodeSettings(sampling, NEW, chunk_steps=16)
  state = sampler.append(sampler.init(4, jax.random.key(7)), _prompts(tokenizer))
  lengths = lambda: np.asarray(state.lengths) - PROMPT_LENGTHS  # noqa: E731
  # Row 3 fills the cache after 10 tokens: the first stop.
  state = sampler.decode(state, chunked, stop_after=1)
  np.testing.assert_array_equal(lengths(), [10, 10, 10, 10])
  np.testing.assert_array_equal(np.asarray(state.status), [sampler_lib.RUNNING] * 3
                                + [sampler_lib.LENGTH])
  state = sampler.decode(state, chunked, max_steps=4, stop_after=1)
  np.testing.assert_array_equal(lengths(), [14, 14, 14, 10])
  state = sampler.decode(state, chunked, stop_after=3)  # rows 0-2 stop at their 20th token
  out = sampler.fetch(state)
  for key in ("tokens", "generated", "status", "lengths", "stop_index"):
    np.testing.assert_array_equal(out[key], whole[key], err_msg=key)
  np.testing.assert_allclose(out["logprobs"], whole["logprobs"], atol=1e-6, rtol=0)
  assert compiled_since(compiled, sampler)["_decode"] <= 1  # one per DecodeSettings


def test_take_rows_moves_rows_into_a_smaller_batch():
  """take_rows gives a smaller batch whose rows continue as they would have in the big one;
  the rows it pads with are empty and IDLE."""
  tokenizer = toy_tokenizer()
  model = _model(tokenizer, scan=False)
  sampler = _sampler(model, tokenizer)
  compiled = compile_count_of(sampler)
  settings = sampler_lib.DecodeSettings(SamplingParams(greedy=True), NEW, chunk_steps=5)
  big = sampler.decode(sampler.append(sampler.init(4, jax.random.key(7)), _prompts(tokenizer)),
                       settings)
  small = sampler.take_rows(big, [2, 0], 4)
  small = sampler.take_rows(small, [1, 0], 2)  # rows 0 and 2 of the first batch, in order
  assert np.asarray(small.status).tolist() == [sampler_lib.RUNNING] * 2
  for _ in range(3):
    big, small = sampler.decode(big, settings), sampler.decode(small, settings)
  want, got = sampler.fetch(big), sampler.fetch(small)
  for key in ("tokens", "generated", "status", "lengths"):
    np.testing.assert_array_equal(got[key], want[key][[0, 2]], err_msg=key)
  np.testing.assert_allclose(got["logprobs"], want["logprobs"][[0, 2]], atol=1e-6, rtol=0)
  padded = sampler.fetch(sampler.take_rows(big, [3], 2))
  assert padded["status"].tolist()[1] == sampler_lib.IDLE and padded["lengths"][1] == 0
  assert compiled_since(compiled, sampler)["_take_rows"] <= 2  # one per batch it makes


def compile_count_of(sampler):
  return sampler_lib.compile_count(sampler)


def compiled_since(counts, sampler):
  """Executables the sampler's functions compiled since `counts` (a `compile_count`): the
  functions are shared with every sampler of an equal program, other tests' ones too."""
  return {name: n - counts[name] for name, n in compile_count_of(sampler).items()}


def test_row_refills_equal_a_fresh_batch():
  """reset_rows + append_rows + copy_rows on a batch that decoded other prompts give the rows
  the same trajectories as appending (and replicating) those prompts into a fresh state."""
  tokenizer = toy_tokenizer()
  model = _model(tokenizer, scan=False)
  sampler = _sampler(model, tokenizer)
  compiled = compile_count_of(sampler)
  settings = sampler_lib.DecodeSettings(SamplingParams(greedy=True), NEW)
  prompts = _prompts(tokenizer)
  # Reference: prompts 0 and 2 each in a group of two rows.
  fresh = sampler.append(sampler.init(2, jax.random.key(1)), [prompts[0], prompts[2]])
  fresh = sampler.fetch(sampler.decode(sampler.replicate(fresh, 2), settings))
  # A batch of 4 that first decodes other prompts, then gets refilled row by row.
  state = sampler.append(sampler.init(4, jax.random.key(2)), prompts[::-1])
  state = sampler.decode(state, settings)
  state = sampler.reset_rows(state, [3, 0, 1, 2])
  assert (np.asarray(state.lengths) == 0).all()
  assert (np.asarray(state.status) == sampler_lib.IDLE).all()
  state = sampler.append_rows(state, [3, 1], [prompts[0], prompts[2]])
  state = sampler.copy_rows(state, [3, 1], [0, 2])
  state = sampler.decode(state, settings)
  out = sampler.fetch(state)
  for row, ref in ((3, 0), (0, 1), (1, 2), (2, 3)):
    n = out["lengths"][row]
    assert n == fresh["lengths"][ref]
    np.testing.assert_array_equal(out["tokens"][row, :n], fresh["tokens"][ref, :n])
    np.testing.assert_array_equal(out["generated"][row, :n], fresh["generated"][ref, :n])
    np.testing.assert_allclose(out["logprobs"][row, :n], fresh["logprobs"][ref, :n], atol=1e-6,
                               rtol=0)
    assert out["status"][row] == fresh["status"][ref]
  # Rows not given to append_rows are untouched by it.
  state = sampler.reset_rows(state, [2])
  before = sampler.fetch(state)
  after = sampler.fetch(sampler.append_rows(state, [2], [prompts[1]]))
  np.testing.assert_array_equal(after["tokens"][[0, 1, 3]], before["tokens"][[0, 1, 3]])
  np.testing.assert_array_equal(after["lengths"], [before["lengths"][0], before["lengths"][1],
                                                   PROMPT_LENGTHS[1], before["lengths"][3]])
  counts = compiled_since(compiled, sampler)
  # Row counts 1, 2 and 4 are their own buckets; prompt widths fall in two.
  assert counts["_reset_rows"] <= 2 and counts["_copy_rows"] <= 1, counts
  assert counts["_append_rows"] <= 3, counts
  assert [sampler_lib.row_bucket(n, 6) for n in (0, 1, 2, 3, 4, 5, 6)] == [1, 1, 2, 4, 4, 6, 6]


def test_samplers_of_one_config_share_their_compiled_functions():
  """A second sampler, for another model of the same config with other stop strings and EOS
  ids (as many), compiles nothing: it reuses the first's executables, with its own weights
  and tables as arguments."""
  tokenizer = toy_tokenizer()
  settings = sampler_lib.DecodeSettings(SamplingParams(greedy=True), NEW)
  prompts = _prompts(tokenizer)
  first = sampler_lib.Sampler(_model(tokenizer, scan=False, seed=11), tokenizer,
                              capacity=CAPACITY + 8, stop_strings_=("\x00",), block_size=8)
  first.fetch(first.decode(first.append(first.init(4, jax.random.key(7)), prompts), settings))
  counts = compile_count_of(first)
  assert counts["_append"] == counts["_decode"] == 1, counts
  model = _model(tokenizer, scan=False, seed=12)
  logits, _ = model(jnp.asarray(prompts[0])[None])
  eos = int(np.argmax(logits[0, -1]))  # row 0's first greedy token ends it
  second = sampler_lib.Sampler(model, tokenizer, capacity=CAPACITY + 8, stop_strings_=("\x01",),
                               eos_token_ids=[eos], block_size=8)
  assert compile_count_of(second) == counts  # the first sampler's executables
  watch = timing.Stopwatch()
  with watch():
    out = second.fetch(second.decode(second.append(second.init(4, jax.random.key(7)), prompts),
                                     settings))
  assert compile_count_of(second) == counts and watch.compile_seconds == 0
  assert out["status"][0] == sampler_lib.EOS and out["lengths"][0] == len(prompts[0]) + 1
  for b in range(1, len(prompts)):  # the second model's greedy tokens
    n, length = len(prompts[b]), out["lengths"][b]
    logits, _ = model(jnp.asarray(out["tokens"][b, :length])[None])
    np.testing.assert_array_equal(out["tokens"][b, n:length],
                                  np.argmax(logits[0, n - 1:length - 1], axis=-1))
