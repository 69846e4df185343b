"""The host side of the search loop: decode, parse, retrieve for every row at once, resume.

Two schedules (config.rollout.schedule). "sync", described here, runs turn by turn with a
barrier; "continuous" (rollout/continuous.py) refills finished rows' slots and retrieves on a
host thread while the other rows decode. Both give a row the same trajectory.

Per turn (sync): the sampler decodes until every row has stopped; each stopped row's new tokens
(only those travel to the host) are parsed into an action; the queries of ALL searching rows go to the retriever in ONE batched
call (identical queries deduplicated); each row's observation (`<information>` block, the
invalid-action text, or the budget notice) is appended to its cache in one batched prefill;
decoding resumes. Rows that answered, hit EOS or filled their cache are finished and stay idle.

In a multi-process run each process parses and retrieves for the rows its devices decode (one
batched call per process and turn); the finished rows are gathered once at the end.

A row's answer is the `<answer>` of the policy's own final turn, never text from an
observation (the fixed observations mention `<answer> and </answer>` themselves).
"""

import copy
import dataclasses
from typing import Sequence

import jax
import numpy as np

from rag_r1_jax import multihost, timing
from rag_r1_jax.retrieval.base import Document, Retriever
from rag_r1_jax.rollout import observation, search_call
from rag_r1_jax.rollout.trajectories import Rollout, RowRecord, build_rollout
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams

SCHEDULES = ("sync", "continuous")


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """The search loop's limits (config.rollout) and the retriever's top-k."""
  mode: str = "mq"  # mq | sq
  max_turns: int = 4  # searches per question
  max_queries_per_call: int = 3
  max_query_chars: int = 512
  max_turn_tokens: int = 500
  max_obs_length: int = 1000
  topk: int = 3
  mq_json_indent: int = 2  # the mq observation's JSON indent; 0: one line
  rows_in_flight: int = 0  # rows decoded at once; a call's rows run in chunks of it (0: all)
  schedule: str = "sync"  # one of SCHEDULES
  decode_chunk_steps: int = 16  # continuous: decode steps between refill / retrieval boundaries

  @classmethod
  def from_config(cls, config) -> "RolloutSettings":
    r = config.rollout
    return cls(mode=r.mode, max_turns=r.max_turns,
               max_queries_per_call=r.max_queries_per_call if r.mode == "mq" else 1,
               max_query_chars=r.max_query_chars, max_turn_tokens=r.max_turn_tokens,
               max_obs_length=r.max_obs_length, topk=config.retrieval.topk,
               mq_json_indent=r.mq_json_indent, rows_in_flight=r.rows_in_flight,
               schedule=r.schedule, decode_chunk_steps=r.decode_chunk_steps)


@dataclasses.dataclass
class _Row:
  prompt_length: int
  turn_start: int
  searches: int = 0
  turns: int = 0
  queries_per_turn: list = dataclasses.field(default_factory=list)
  finish_reason: str | None = None
  answer: str | None = None


class RolloutEngine:
  """Runs batched multi-turn search-and-answer rollouts with one model and one retriever."""

  def __init__(self, sampler: sampler_lib.Sampler, tokenizer, retriever: Retriever,
               settings: RolloutSettings):
    self.sampler = sampler
    self.tokenizer = tokenizer
    self.retriever = retriever
    self.settings = settings
    self.retrieval_calls = 0
    self.retrieval_batches: list[int] = []  # distinct queries sent in each retriever call
    self._encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    self._truncate = observation.token_truncate(
        self._encode, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

  def run(self, prompts: Sequence[str], *, sampling: SamplingParams, seed: int = 0,
          group_size: int = 1, batch_size: int | None = None) -> Rollout:
    """Rolls out `group_size` samples of each prompt (chat-templated text).

    Rows are grouped: rows q*group_size .. q*group_size+group_size-1 belong to prompts[q].
    `batch_size` pads the number of prompts to a fixed count so shapes (and compiled
    functions) stay the same across calls; padded rows are dropped from the result.
    With `settings.rows_in_flight` = R > 0 the prompts run R / group_size at a time through a
    sampler batch of R rows (the last chunk padded), chunk c sampling from the key
    fold_in(key(seed), c) (chunk 0 from key(seed), so one chunk equals an unchunked call).
    The continuous schedule instead keeps R slots busy (all rows of the call if R is 0).
    """
    if self.settings.schedule not in SCHEDULES:
      raise ValueError(f"config.rollout.schedule={self.settings.schedule!r} must be one of "
                       f"{', '.join(SCHEDULES)}")
    calls_before = len(self.retrieval_batches)
    if self.settings.schedule == "continuous":
      from rag_r1_jax.rollout import continuous  # noqa: PLC0415  (it imports this module)
      rollout = continuous.run(self, prompts, sampling=sampling, seed=seed,
                               group_size=group_size, batch_size=batch_size)
    else:
      rollout = self._run_sync(prompts, sampling, seed, group_size, batch_size)
    rollout.retrieval_queries = self.retrieval_batches[calls_before:]
    return rollout

  def _run_sync(self, prompts: Sequence[str], sampling: SamplingParams, seed: int,
                group_size: int, batch_size: int | None) -> Rollout:
    num_prompts = len(prompts)
    padded_prompts = batch_size or num_prompts
    if padded_prompts < num_prompts:
      raise ValueError(f"batch_size {batch_size} < {num_prompts} prompts")
    in_flight = self.settings.rows_in_flight
    if in_flight and in_flight % group_size:
      raise ValueError(f"config.rollout.rows_in_flight={in_flight} must be a multiple of the "
                       f"group size {group_size} (rl.group_size): a group shares one prefill")
    per_chunk = in_flight // group_size if in_flight else padded_prompts
    if padded_prompts <= per_chunk:
      host, keep, records, row_steps = self._run_chunk(
          list(prompts), sampling, jax.random.key(seed), group_size, padded_prompts)
      return build_rollout(host, keep, records, group_size, row_steps)
    hosts, keep, records, row_steps = [], [], [], []
    for c, start in enumerate(range(0, num_prompts, per_chunk)):
      key = jax.random.key(seed) if c == 0 else jax.random.fold_in(jax.random.key(seed), c)
      host, chunk_keep, chunk_records, chunk_steps = self._run_chunk(
          list(prompts[start:start + per_chunk]), sampling, key, group_size, per_chunk)
      row_steps += chunk_steps
      offset = sum(h["tokens"].shape[0] for h in hosts)
      hosts.append(host)
      keep += [b + offset for b in chunk_keep]
      records += [dataclasses.replace(r, prompt_index=r.prompt_index + start)
                  for r in chunk_records]
    width = max(h["tokens"].shape[1] for h in hosts)  # chunks are fetched at their own widths
    pad = lambda x: np.pad(x, [(0, 0), (0, width - x.shape[1])]) if x.ndim == 2 else x  # noqa: E731
    host = {k: np.concatenate([pad(h[k]) for h in hosts]) for k in hosts[0]}
    return build_rollout(host, keep, records, group_size, row_steps)

  def _run_chunk(self, prompts: Sequence[str], sampling: SamplingParams, rng: jax.Array,
                 group_size: int, padded_prompts: int):
    """Rolls out `prompts` in one sampler batch: (host arrays, kept rows, their records,
    (useful, all) decode row-steps per turn)."""
    num_prompts = len(prompts)
    prompt_ids = self.encode_prompts(prompts)
    capacity = self.sampler.capacity
    settings = sampler_lib.DecodeSettings(sampling, self.settings.max_turn_tokens)
    # Seconds leave out JAX compilation (a new chunk width, the first call), kept apart.
    total_watch, decode_watch, retrieval_watch = (timing.Stopwatch() for _ in range(3))
    with total_watch():
      state = self.sampler.init(padded_prompts, rng)
      chunks = prompt_ids + [None] * (padded_prompts - num_prompts)
      state = self.sampler.append(state, chunks)
      state = self.sampler.replicate(state, group_size)
      batch = padded_prompts * group_size
      rows = [_Row(len(prompt_ids[b // group_size]) if b // group_size < num_prompts else 0, 0)
              for b in range(batch)]
      for b, row in enumerate(rows):
        row.turn_start = row.prompt_length
        if b // group_size >= num_prompts:
          row.finish_reason = "padding"
      # The rows this process's devices decode: it parses and retrieves for these alone.
      local = multihost.local_rows(state.status)
      turn_tokens = []  # per turn: (most tokens a local row decoded, tokens all local rows did)

      while True:
        decoding = [b for b in local.tolist() if rows[b].finish_reason is None]
        with decode_watch():
          state = self.sampler.decode(state, settings)
          turn = self.sampler.fetch_turn(state, [row.turn_start for row in rows],
                                         self.settings.max_turn_tokens)
        new = [int(turn["lengths"][b]) - rows[b].turn_start for b in decoding]
        turn_tokens.append((max(new, default=0), sum(new)))
        observations, pending = self._act(rows, local, turn)
        if pending:
          with retrieval_watch():
            self._retrieve_into(observations, pending)
        chunks = self._observation_chunks(rows, turn, observations)
        if not multihost.any_process(any(chunks)):
          break
        with decode_watch():
          state = self._resume(state, chunks)

      parts = multihost.gather_objects({"rows": {int(b): dataclasses.asdict(rows[b])
                                                 for b in local}, "turn_tokens": turn_tokens})
      for part in parts:
        for b, fields in part["rows"].items():
          rows[int(b)] = _Row(**fields)
      # A decode call runs as many steps as its longest-decoding row, each step over the batch.
      row_steps = [(sum(p["turn_tokens"][t][1] for p in parts),
                    max(p["turn_tokens"][t][0] for p in parts) * batch)
                   for t in range(len(turn_tokens))]
      width = sampler_lib.bucket(int(turn["lengths"][local].max(initial=1)))
      host = self.sampler.fetch(state, min(multihost.max_over_processes(width), capacity))
    keep = [b for b in range(batch) if rows[b].finish_reason != "padding"]
    records = []
    for b in keep:
      row = rows[b]
      length = int(host["lengths"][b])
      response_ids = host["tokens"][b, row.prompt_length:length].tolist()
      response = self.tokenizer.decode(response_ids, skip_special_tokens=False)
      n = len(keep)
      records.append(RowRecord(
          prompt_index=b // group_size, response_text=response,
          answer=row.answer,
          turns=row.searches, queries_per_turn=list(row.queries_per_turn),
          finish_reason=row.finish_reason or "unfinished",
          generated_tokens=int(host["generated"][b, :length].sum()),
          prompt_tokens=row.prompt_length, total_tokens=length,
          decode_seconds=decode_watch.seconds / n,
          retrieval_seconds=retrieval_watch.seconds / n,
          total_seconds=total_watch.seconds / n,
          compile_seconds=total_watch.compile_seconds / n))
    return host, keep, records, row_steps

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt; ValueError for one that leaves no room in the cache."""
    prompt_ids = [self._encode(p) for p in prompts]
    capacity = self.sampler.capacity
    too_long = [i for i, ids in enumerate(prompt_ids) if len(ids) >= capacity]
    if too_long:
      raise ValueError(f"prompt {too_long[0]} has {len(prompt_ids[too_long[0]])} tokens, "
                       f"which does not fit the sampler's capacity {capacity} "
                       "(config.rollout.max_total_length)")
    return prompt_ids

  def searching(self, retriever: Retriever) -> "RolloutEngine":
    """This engine (its sampler, tokenizer and settings) searching `retriever` instead; its
    retrieval counters start at 0."""
    other = copy.copy(self)
    other.retriever = retriever
    other.retrieval_calls, other.retrieval_batches = 0, []
    return other

  def _resume(self, state: sampler_lib.SamplerState, chunks) -> sampler_lib.SamplerState:
    """Appends each resumed row's observation (chunks[b]; None: the row is not resumed) to its
    cache, which holds everything before it: only the new tokens are prefilled."""
    return self.sampler.append(state, chunks)

  # ---- one turn ------------------------------------------------------------------------------

  def _act(self, rows: list[_Row], local: np.ndarray, turn: dict[str, np.ndarray]
           ) -> tuple[dict[int, str], dict[int, tuple[str, ...]]]:
    """Decides the next step of every stopped row in `local` from its turn's tokens
    (`Sampler.fetch_turn` from the rows' turn starts); returns observations and searches."""
    observations: dict[int, str] = {}
    pending: dict[int, tuple[str, ...]] = {}
    for b in local.tolist():
      row = rows[b]
      if row.finish_reason is not None:
        continue
      new = int(turn["lengths"][b]) - row.turn_start
      if new > turn["tokens"].shape[1]:
        raise AssertionError(f"row {b} decoded {new} tokens in a turn of at most "
                             f"{turn['tokens'].shape[1]}")
      text, queries = self.advance(row, turn["tokens"][b, :new].tolist(), int(turn["status"][b]))
      if queries:
        pending[b] = queries
      if text is not None:
        observations[b] = text
    return observations, pending

  def advance(self, row: "_Row", turn_ids: list[int], status: int
              ) -> tuple[str | None, tuple[str, ...]]:
    """Applies a row's next step after a turn (its new token ids, the decode status): finishes
    it, or returns its observation text (for a search: a note on the call's problem, or None)
    and its queries."""
    text = self.tokenizer.decode(turn_ids, skip_special_tokens=False)
    step = next_step(text, status, row.searches, row.turns, self.settings)
    row.turns += 1
    if step.finish_reason:
      row.finish_reason, row.answer = step.finish_reason, step.answer
      return None, ()
    if step.queries:
      row.searches += 1
      row.queries_per_turn.append(len(step.queries))
    return step.observation, step.queries

  def _retrieve_into(self, observations: dict[int, str], pending: dict[int, tuple[str, ...]]):
    """One batched retriever call for the queries of every searching row."""
    unique = self.distinct_queries(pending)
    self.information_into(observations, pending, self.search(unique))

  def distinct_queries(self, pending: dict[int, tuple[str, ...]]) -> list[str]:
    """The rows' queries, each once, in order; counted as one retriever call."""
    unique = list(dict.fromkeys(q for queries in pending.values() for q in queries))
    self.retrieval_calls += 1
    self.retrieval_batches.append(len(unique))
    return unique

  def search(self, unique: list[str]) -> dict[str, list[Document]]:
    """One retriever call (thread-safe as far as the retriever is: it touches no engine state)."""
    return dict(zip(unique, self.retriever.retrieve(unique, self.settings.topk)))

  def information_into(self, observations: dict[int, str], pending: dict[int, tuple[str, ...]],
                       by_query: dict[str, list[Document]]) -> None:
    """Each searching row's `<information>` block (with its problem note, if any)."""
    for b, queries in pending.items():
      docs = [by_query[q] for q in queries]
      observations[b] = observation.information_block(
          queries, docs, self.settings.mode, self._truncate, self.settings.max_obs_length,
          note=observations.get(b),  # a problem note of a search that still ran
          json_indent=self.settings.mq_json_indent)

  def _observation_chunks(self, rows: list[_Row], turn, observations: dict[int, str]):
    """Token chunks to append; a row whose observation no longer fits ends with 'length'."""
    chunks: list[list[int] | None] = [None] * len(rows)
    for b, text in observations.items():
      chunks[b] = self.observation_ids(rows[b], int(turn["lengths"][b]), text)
    return chunks

  def observation_ids(self, row: "_Row", length: int, text: str) -> list[int] | None:
    """The observation's token ids for a row at `length` tokens; None (the row ends with
    'length') when they leave no room for one more token."""
    ids = self._encode(text)
    if length + len(ids) >= self.sampler.capacity:
      row.finish_reason = "length"
      return None
    row.turn_start = length + len(ids)
    return ids


@dataclasses.dataclass(frozen=True)
class Step:
  """What to do with a row after a turn: finish it, search (queries), or observe a text.

  For a search, `observation` (if set) is a note on the call's problem, put inside the block.
  """
  finish_reason: str | None = None
  queries: tuple[str, ...] = ()
  observation: str | None = None
  answer: str | None = None


def next_step(turn_text: str, status: int, searches: int, turns: int,
              settings: RolloutSettings) -> Step:
  """The row's next step after a turn that ended with `status`; defined for any text."""
  if status == sampler_lib.LENGTH:
    return Step(finish_reason="length")
  action = search_call.parse_action(turn_text, mode=settings.mode,
                                    max_queries_per_call=settings.max_queries_per_call,
                                    max_query_chars=settings.max_query_chars)
  if action.kind == "answer":
    return Step(finish_reason="answer", answer=action.answer)
  if status == sampler_lib.EOS:
    return Step(finish_reason="eos")
  if turns >= settings.max_turns + 1:
    return Step(finish_reason="max_turns")  # every allowed turn used without an answer
  if action.kind == "search" and searches >= settings.max_turns:
    return Step(observation=observation.budget_exhausted_observation())
  if action.kind == "search":
    return Step(queries=action.queries, observation=action.problem)
  return Step(observation=observation.invalid_action_observation(action.problem))
