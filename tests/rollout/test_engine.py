"""The rollout engine on a scripted decoder: pause/resume exactness, cache reuse, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout import engine as engine_lib, observation
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import EOS, bigram_model, toy_tokenizer

# Q: searches "alpha,beta" every turn; A: answers at once; B: babbles until the turn budget.
SUCCESSOR = {"Q:": "<search>", "<search>": "alpha", "alpha": ",", ",": "beta",
             "beta": "</search>", "A:": "<answer>", "<answer>": "paris", "paris": "</answer>",
             "B:": "b", "b": "b"}
DOCS = [Document("d1", "Alpha", "alpha is a letter"), Document("d2", "Beta", "beta follows alpha"),
        Document("d3", "Paris", "paris is a city")]
GREEDY = SamplingParams(greedy=True)


class CountingRetriever(ExactRetriever):
  def __init__(self, docs):
    super().__init__(docs)
    self.batches = []

  def retrieve(self, queries, topk):
    self.batches.append(list(queries))
    return super().retrieve(queries, topk)


@pytest.fixture(scope="module")
def toy():
  tokenizer = toy_tokenizer()
  model = bigram_model(tokenizer, SUCCESSOR, default="<search>")
  return tokenizer, model


def _engine(toy, mode="mq", capacity=768, max_turns=2, max_turn_tokens=12):
  tokenizer, model = toy
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=capacity,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(EOS)])
  settings = engine_lib.RolloutSettings(mode=mode, max_turns=max_turns,
                                        max_queries_per_call=3 if mode == "mq" else 1,
                                        max_turn_tokens=max_turn_tokens, max_obs_length=40,
                                        topk=2)
  return engine_lib.RolloutEngine(sampler, tokenizer, CountingRetriever(DOCS), settings)


PROMPTS = ["hello Q:", "a much longer prompt A:", "x B:", "why Q:"]


def test_rows_follow_the_script(toy):
  eng = _engine(toy)
  out = eng.run(PROMPTS, sampling=GREEDY)
  reasons = [r.finish_reason for r in out.records]
  assert reasons == ["max_turns", "answer", "max_turns", "max_turns"]
  assert [r.answer for r in out.records] == [None, "paris", None, None]
  assert out.records[0].turns == 2 and out.records[0].queries_per_turn == [2, 2]
  assert out.records[1].turns == 0
  assert out.records[0].response_text.startswith("<search>alpha,beta</search>\n\n<information>")
  assert "My search budget is used up" in out.records[0].response_text
  assert out.records[2].response_text.startswith("b" * 12 + observation.INVALID_ACTION_TEXT)


def test_tokens_and_logprobs_equal_teacher_forced_forward(toy):
  _, model = toy
  out = _engine(toy).run(PROMPTS, sampling=GREEDY)
  for b, record in enumerate(out.records):
    n = record.total_tokens
    tokens = out.tokens[b, :n]
    logits, _ = model(jnp.asarray(tokens)[None])
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    generated = np.nonzero(out.loss_mask[b, :n])[0]
    assert len(generated) == record.generated_tokens > 0
    assert generated.min() == record.prompt_tokens
    # Each generated token is the argmax of the full forward at the previous position ...
    np.testing.assert_array_equal(tokens[generated], logp[generated - 1].argmax(-1))
    # ... and its stored log-prob is the full forward's.
    np.testing.assert_allclose(out.sampler_logprobs[b, generated],
                               logp[generated - 1, tokens[generated]], atol=1e-4)


def test_cache_is_reused_no_token_prefilled_twice(toy):
  tokenizer, _ = toy
  eng = _engine(toy)
  out = eng.run(PROMPTS, sampling=GREEDY)
  prompt_tokens = sum(len(tokenizer.encode(p, add_special_tokens=False)) for p in PROMPTS)
  observed = int(sum((out.attention_mask[b] & (out.loss_mask[b] == 0)).sum()
                     for b in range(len(PROMPTS))))
  # Everything that was not generated was prefilled exactly once: prompts + observations.
  assert eng.sampler.prefill_tokens == observed
  assert observed > prompt_tokens + 300  # several observations were appended


def test_one_retrieval_call_per_turn_for_the_whole_batch(toy):
  eng = _engine(toy)
  eng.run(PROMPTS * 3, sampling=GREEDY)
  # Searches happen in 2 turns (B rows search only after their invalid turn: turn 2 and 3).
  batches = eng.retriever.batches
  assert eng.retrieval_calls == len(batches) == 3
  assert all(b == ["alpha", "beta"] for b in batches)  # identical queries deduplicated


def test_searching_another_retriever_leaves_the_engine_as_it_was(toy):
  eng = _engine(toy)
  other = eng.searching(CountingRetriever([Document("x", "Alpha", "alpha is elsewhere")]))
  assert other.sampler is eng.sampler and other.settings is eng.settings
  out = other.run(["Q:"], sampling=GREEDY)
  assert "alpha is elsewhere" in out.records[0].response_text
  assert other.retriever.batches and other.retrieval_calls == len(other.retriever.batches)
  assert eng.retriever.batches == [] and eng.retrieval_calls == 0  # the original: untouched
  assert "alpha is a letter" in eng.run(["Q:"], sampling=GREEDY).records[0].response_text


def test_loss_mask_zero_on_prompt_information_and_padding(toy):
  tokenizer, _ = toy
  out = _engine(toy).run(PROMPTS, sampling=GREEDY)
  for b, record in enumerate(out.records):
    n = record.total_tokens
    mask = out.loss_mask[b]
    assert not mask[:record.prompt_tokens].any() and not mask[n:].any()
    assert not out.attention_mask[b, n:].any()
    # The text under mask 0 after the prompt is exactly the observations the engine inserted.
    observed = tokenizer.decode(out.tokens[b, record.prompt_tokens:n][mask[record.prompt_tokens:n] == 0])
    generated = tokenizer.decode(out.tokens[b, :n][mask[:n] == 1])
    assert "<information>" not in generated and "alpha is a letter" not in generated
    if record.turns:
      assert observed.count("<information>") == record.turns
      assert "alpha is a letter" in observed


def test_single_query_mode_keeps_comma_query_whole(toy):
  eng = _engine(toy, mode="sq")
  out = eng.run(["Q:"], sampling=GREEDY)
  assert eng.retriever.batches[0] == ["alpha,beta"]
  assert out.records[0].queries_per_turn == [1, 1]
  assert 'Doc 1(Title: "' in out.records[0].response_text


def test_full_cache_ends_row_with_length_others_unaffected(toy):
  eng = _engine(toy, capacity=96)
  out = eng.run(["Q:", "A:"], sampling=GREEDY)
  assert [r.finish_reason for r in out.records] == ["length", "answer"]
  reference = _engine(toy).run(["A:"], sampling=GREEDY)
  assert out.records[1].response_text == reference.records[0].response_text


def test_same_seed_same_trajectories_and_groups_share_prefill(toy):
  eng = _engine(toy)
  sampling = SamplingParams(temperature=8.0, top_p=0.95)  # the scripted model is very peaked
  a = eng.run(PROMPTS[:2], sampling=sampling, seed=3, group_size=3)
  b = eng.run(PROMPTS[:2], sampling=sampling, seed=3, group_size=3)
  c = eng.run(PROMPTS[:2], sampling=sampling, seed=4, group_size=3)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  np.testing.assert_array_equal(a.group_ids, [0, 0, 0, 1, 1, 1])
  assert len({tuple(t) for t in a.tokens[:3]}) > 1  # samples of one prompt differ


def test_seconds_leave_compilation_out(toy):
  eng = _engine(toy, capacity=640)  # a capacity no other test uses: a fresh compile
  first = eng.run(PROMPTS, sampling=GREEDY).records[0]
  again = eng.run(PROMPTS, sampling=GREEDY).records[0]
  assert first.compile_seconds > 0 and again.compile_seconds == 0
  for record in (first, again):
    assert 0 < record.decode_seconds <= record.total_seconds
  # Compiling the prefill and decode costs far more than running them on a toy model.
  assert first.total_seconds < first.compile_seconds


def _compiled_since(before: dict[str, int], sampler) -> dict[str, int]:
  """Executables compiled since `before` (a `compile_count`): samplers of one program, as
  this file's, share them."""
  return {name: n - before[name] for name, n in sampler_lib.compile_count(sampler).items()}


def test_compilations_stay_bounded_across_batches(toy):
  eng = _engine(toy)
  before = sampler_lib.compile_count(eng.sampler)
  for prompts in (["Q:", "A:"], ["a longer Q:", "A:"], ["B:", "x A:"], ["yy Q:", "zz B:"]):
    eng.run(prompts, sampling=GREEDY, batch_size=4)
  counts = _compiled_since(before, eng.sampler)
  assert counts["_decode"] <= 1, counts
  # prompts share the 16-token bucket; observations fall in at most 3 buckets.
  assert counts["_append"] <= 4, counts


@settings(max_examples=10_000, deadline=None, derandomize=True)
@given(text=st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["<search>", "</search>", "<answer>", "</answer>", ",", "\n", "q",
                              '"', "[", "]", "{", "}", " ", "é", "\\"]), max_size=60).map("".join)),
       status=st.sampled_from([sampler_lib.STOPPED, sampler_lib.TURN_LIMIT, sampler_lib.EOS,
                               sampler_lib.LENGTH]),
       searches=st.integers(0, 3), turns=st.integers(0, 5))
def test_any_model_output_gets_a_defined_next_step(text, status, searches, turns):
  step = engine_lib.next_step(text, status, searches, turns, engine_lib.RolloutSettings(max_turns=3))
  kinds = [bool(step.finish_reason), bool(step.queries), step.observation is not None and not step.queries]
  assert sum(kinds) == 1, step
  if step.queries:
    assert 1 <= len(step.queries) <= 3 and all(q.strip() for q in step.queries)
  if step.observation is not None and not step.queries:
    assert step.observation.strip()


def test_adversarial_outputs_next_step():
  settings_ = engine_lib.RolloutSettings(max_turns=3, max_query_chars=100)
  huge = "<search>" + "x" * 100_000 + "</search>"
  step = engine_lib.next_step(huge, sampler_lib.STOPPED, 0, 0, settings_)
  assert step.queries == ("x" * 100,) and "cut" in step.observation
  fifty = "<search>" + ",".join(f"q{i}" for i in range(50)) + "</search>"
  step = engine_lib.next_step(fifty, sampler_lib.STOPPED, 0, 0, settings_)
  assert step.queries == ("q0", "q1", "q2")
  step = engine_lib.next_step("<search> , , </search>", sampler_lib.STOPPED, 0, 0, settings_)
  assert "empty" in step.observation and not step.queries
  step = engine_lib.next_step("<search>q</search>", sampler_lib.STOPPED, 3, 3, settings_)
  assert step.observation == observation.budget_exhausted_observation()
  step = engine_lib.next_step("nothing", sampler_lib.EOS, 0, 0, settings_)
  assert step.finish_reason == "eos"


@pytest.mark.parametrize("group_size", [1, 2])
def test_rows_in_flight_runs_chunks_that_equal_one_batch(toy, group_size):
  """rollout.rows_in_flight: the prompts run a few rows at a time through a smaller sampler
  batch; greedy trajectories, masks, groups and records equal one call over all rows."""
  whole = _engine(toy).run(PROMPTS * 2, sampling=GREEDY, group_size=group_size, batch_size=9)
  chunked_engine = _engine(toy)
  chunked_engine.settings = engine_lib.RolloutSettings(**{
      **chunked_engine.settings.__dict__, "rows_in_flight": 3 * group_size})
  chunked = chunked_engine.run(PROMPTS * 2, sampling=GREEDY, group_size=group_size,
                               batch_size=9)
  for key, value in whole.tensors().items():  # log-probs: batches of other sizes sum in
    np.testing.assert_allclose(chunked.tensors()[key], value, rtol=1e-6, err_msg=key)  # another order
  strip = lambda r: {k: v for k, v in r.to_dict().items() if not k.endswith("seconds")}  # noqa: E731
  assert [strip(r) for r in chunked.records] == [strip(r) for r in whole.records]
  assert len(chunked.records) == 8 * group_size


def test_rows_in_flight_must_hold_whole_groups(toy):
  eng = _engine(toy)
  eng.settings = engine_lib.RolloutSettings(**{**eng.settings.__dict__, "rows_in_flight": 3})
  with pytest.raises(ValueError, match="rows_in_flight=3 must be a multiple of the group size 2"):
    eng.run(PROMPTS, sampling=GREEDY, group_size=2)


def test_slot_use_counts_decode_row_steps(toy):
  """Turn 1: Q rows decode '<search>alpha,beta</search>' (5 tokens), the A row
  '<answer>paris</answer>' (3), the B row babbles to the 12-token budget: the call runs 12 steps
  over 4 rows. Over the rollout, useful row-steps are the generated tokens."""
  out = _engine(toy).run(PROMPTS, sampling=GREEDY)
  assert out.decode_row_steps[0] == (5 + 3 + 12 + 5, 12 * 4)
  assert sum(u for u, _ in out.decode_row_steps) == sum(r.generated_tokens for r in out.records)
  assert all(total % 4 == 0 and useful <= total for useful, total in out.decode_row_steps)
  useful, total = np.sum(out.decode_row_steps, axis=0)
  assert out.slot_use == useful / total and 0 < out.slot_use < 1
  # Padding rows (batch_size 6 for 4 prompts) cost slots too.
  padded = _engine(toy).run(PROMPTS, sampling=GREEDY, batch_size=6)
  assert padded.decode_row_steps[0] == (25, 12 * 6)


def _continuous(toy, rows_in_flight=0, chunk_steps=3, retriever=None, **kwargs):
  eng = _engine(toy, **kwargs)
  eng.settings = engine_lib.RolloutSettings(**{
      **eng.settings.__dict__, "schedule": "continuous", "rows_in_flight": rows_in_flight,
      "decode_chunk_steps": chunk_steps})
  if retriever is not None:
    eng.retriever = retriever
  return eng


def _assert_same_rollouts(got, want):
  for key, value in want.tensors().items():
    if key == "sampler_logprobs":  # batches of other sizes may sum in another order
      np.testing.assert_allclose(got.tensors()[key], value, atol=1e-6, rtol=0, err_msg=key)
    else:
      np.testing.assert_array_equal(got.tensors()[key], value, err_msg=key)
  strip = lambda r: {k: v for k, v in r.to_dict().items() if not k.endswith("seconds")}  # noqa: E731
  assert [strip(r) for r in got.records] == [strip(r) for r in want.records]


# Prompts of different lengths whose rows take 1 (A), 3 (Q: two searches and the budget
# notice) or 4 turns (B: an invalid turn first), so slots free at different times.
MIXED = ["hello Q:", "a much longer prompt A:", "x B:", "why Q:", "A:", "some B:", "Q:",
         "the last, longest prompt of all A:"]


@pytest.mark.parametrize("group_size,rows_in_flight", [(1, 0), (1, 3), (2, 4)])
def test_continuous_schedule_equals_sync(toy, group_size, rows_in_flight):
  """Greedy rollouts under the continuous schedule (decode in 3-step calls, slots refilled
  from the queue, retrieval on a thread) equal the synchronous engine's: tokens, masks,
  log-probs, groups, finish reasons, answers and turn counts of every row, in prompt order."""
  sync = _engine(toy).run(MIXED, sampling=GREEDY, group_size=group_size)
  eng = _continuous(toy, rows_in_flight=rows_in_flight)
  got = eng.run(MIXED, sampling=GREEDY, group_size=group_size)
  _assert_same_rollouts(got, sync)
  assert {r.finish_reason for r in got.records} == {"answer", "max_turns"}
  assert {r.turns for r in got.records} == {0, 2}
  # Every generated token was a useful row-step; a call's row-steps are its steps (at most 3)
  # over every slot of its batch: all of them, or a half, quarter or eighth once the queue has
  # drained.
  slots = rows_in_flight or len(MIXED) * group_size
  assert sum(u for u, _ in got.decode_row_steps) == sum(r.generated_tokens for r in got.records)
  batches = [slots >> k for k in (0, 1, 2, 3) if slots >> k and slots % (slots >> k) == 0]
  assert all(any(total % n == 0 and total <= 3 * n for n in batches)
             for _, total in got.decode_row_steps), got.decode_row_steps
  idle = sum(got.idle_row_steps.values())
  assert idle == sum(total - useful for useful, total in got.decode_row_steps), got.idle_row_steps
  # Each call sends the distinct queries of the rows that paused since the last one.
  assert got.retrieval_queries == [2] * len(got.retrieval_queries)
  assert sum(got.retrieval_queries) == 2 * len(eng.retriever.batches)


def test_continuous_refill_keeps_slots_busier_than_sync(toy):
  """With 2 slots, an answering row's slot takes the next prompt while a babbling row
  decodes on: a larger share of row-steps is useful than in sync chunks of 2 rows."""
  prompts = ["x B:", "A:", "y B:", "A:", "z B:", "A:"]
  chunked = _engine(toy)
  chunked.settings = engine_lib.RolloutSettings(**{**chunked.settings.__dict__,
                                                   "rows_in_flight": 2})
  sync = chunked.run(prompts, sampling=GREEDY)
  got = _continuous(toy, rows_in_flight=2, chunk_steps=4).run(prompts, sampling=GREEDY)
  _assert_same_rollouts(got, sync)
  assert got.slot_use > sync.slot_use + 0.1, (got.slot_use, sync.slot_use)


class GatedRetriever(CountingRetriever):
  """Answers its first call only after the engine has decoded while it waited (or gives up
  after 120 s: a compile on a loaded machine can hold the next decode call back for a while);
  later calls at once (when every row waits on one, nothing decodes)."""

  def __init__(self, docs, sampler):
    super().__init__(docs)
    self.sampler, self.overlapped = sampler, []

  def retrieve(self, queries, topk):
    import time
    if self.overlapped:
      return super().retrieve(queries, topk)
    start, deadline = self._decodes(), time.time() + 120
    while self._decodes() == start and time.time() < deadline:
      time.sleep(0.005)
    self.overlapped.append(self._decodes() > start)
    return super().retrieve(queries, topk)

  def _decodes(self):
    return self.sampler.decode_calls


def test_retrieval_runs_while_other_rows_decode(toy):
  """A search call is answered on the retrieval thread while the device decodes the babbling
  rows: the retriever sees decode calls made after it started, and the result still equals
  the synchronous engine's."""
  sync = _engine(toy).run(MIXED[:4], sampling=GREEDY)
  eng = _continuous(toy, chunk_steps=2)
  sampler = eng.sampler
  sampler.decode_calls = 0
  decode = sampler.decode

  def counting_decode(state, settings_, **bounds):
    sampler.decode_calls += 1
    return decode(state, settings_, **bounds)

  sampler.decode = counting_decode
  eng.retriever = GatedRetriever(DOCS, sampler)
  got = eng.run(MIXED[:4], sampling=GREEDY)
  _assert_same_rollouts(got, sync)
  assert eng.retriever.overlapped and eng.retriever.overlapped[0], eng.retriever.overlapped


def test_continuous_compilations_stay_bounded(toy, monkeypatch):
  """Per-row functions compile per row bucket (1, 2, 4 rows) and chunk width, a bounded
  number of times however many calls with other prompts, orders and groups follow; the
  whole-batch append and replicate are never called."""
  eng = _continuous(toy, rows_in_flight=4)
  for name in ("append", "replicate"):
    monkeypatch.setattr(eng.sampler, name, lambda *args, name=name, **kwargs: pytest.fail(name))
  before = sampler_lib.compile_count(eng.sampler)
  batches = [(MIXED, 1), (MIXED[::-1], 2), (MIXED[2:], 1), (["A:"], 2)]
  for prompts, group_size in batches:
    eng.run(prompts, sampling=GREEDY, group_size=group_size)
  # Which row counts a boundary frees depends on when the retrieval thread finishes, so the
  # per-row functions' counts are bounded rather than fixed. A drained rollout moves into
  # batches of 2 and 1 rows: 3 batches, decoding once each; 1 + 2 + 3 (batch, row bucket)
  # pairs, each possibly twice (a state fresh from `init` and one returned by a jitted call).
  def check(counts):
    assert counts["_decode"] <= 3 and counts["_window"] <= 3, counts
    assert counts["_take_rows"] <= 2 * 2, counts
    assert counts["_reset_rows"] <= 6 and counts["_copy_rows"] <= 6, counts
    assert counts["_append_rows"] <= 6 * 4, counts
    assert counts["_append"] == counts["_replicate"] == 0

  check(_compiled_since(before, eng.sampler))
  for prompts, group_size in batches[::-1]:
    eng.run(prompts, sampling=GREEDY, group_size=group_size)
  check(_compiled_since(before, eng.sampler))


def test_continuous_schedule_refuses_several_processes_and_bad_names(toy, monkeypatch):
  eng = _continuous(toy)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="config.rollout.schedule='continuous'.*single-process"):
    eng.run(PROMPTS, sampling=GREEDY)
  monkeypatch.undo()
  eng.settings = engine_lib.RolloutSettings(**{**eng.settings.__dict__, "schedule": "async"})
  with pytest.raises(ValueError, match="config.rollout.schedule='async' must be one of sync, "
                     "continuous"):
    eng.run(PROMPTS, sampling=GREEDY)
