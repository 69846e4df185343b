"""The continuous rollout schedule: a fixed number of slots kept busy, retrieval off the barrier.

The sampler decodes in calls of at most `decode_chunk_steps` steps (a boundary after each).
A call returns early (the bounds are traced: no recompilation) at the first row that stops
while a stopped row has somewhere to go (a prompt waits for a slot, the retrieval thread is
free for its search, or the batch can shrink), and about when the retrieval in flight should
be done (its last call's seconds over the measured seconds per step). At a boundary the host
reads the chunk's new tokens of every row that was running, and a row whose turn ended is
parsed as the synchronous schedule parses it (`RolloutEngine.advance`):
- a finished row's slot is freed (its trajectory is already on the host, read chunk by chunk);
- a row that searched waits: the queries of every row that paused since the last call go to
  the retriever in ONE deduplicated call on a host thread (one worker), sent at the first
  boundary at which no call is running, while the device decodes the other rows; its
  `<information>` block is appended, and the row resumes, at the first boundary after the call
  is done;
- a row given a fixed observation (invalid action, budget notice) gets it at the next boundary.
Free slots are refilled from the queue of prompts in order, a GRPO group as a whole: its
prompt is prefilled in one slot and copied into its other members' slots. Only the rows that
get something are prefilled (`Sampler.append_rows`, one call per chunk width). When no row
is running the host waits for the retrieval in flight. Once no prompt is left to admit and
the live rows fit half the batch (down to an eighth), they move into that smaller batch
(`Sampler.take_rows`): the drain's empty slots would otherwise cost a full batch per step.

A row's trajectory is the synchronous schedule's: a row's tokens depend only on its own cache,
and decoding a turn in chunks draws the same tokens (`Sampler.decode`). Under random sampling
the draws differ (rows share one key sequence, consumed in another order), as they do between
batch sizes. Rows come back in the order of the prompts. One process only: rows are refilled
one by one, which several processes would have to agree on at every boundary.
"""

import collections
import concurrent.futures
import dataclasses
import math
import time
from typing import Sequence

import jax
import numpy as np

from rag_r1_jax import timing
from rag_r1_jax.rollout.trajectories import Rollout, RowRecord, build_rollout
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams

# Why a slot idled during a decode call: its row stopped before the call's last step
# (turn_end); its row waits for a search whose call has not been sent, the retrieval thread
# being busy (retrieval_queued), or for the call in flight (retrieval_running); the slot is
# empty while prompts wait (fewer free slots than a group) or with nothing left to admit
# (free_queue_empty: the rollout's unavoidable drain at a fixed batch).
IDLE_CAUSES = ("turn_end", "retrieval_queued", "retrieval_running", "free_queue_waiting",
               "free_queue_empty")


@dataclasses.dataclass
class _Trajectory:
  """A row's tokens so far on the host: [length] each."""
  tokens: list
  logprobs: list
  generated: list

  def extend(self, tokens, logprobs, generated) -> None:
    self.tokens += list(tokens)
    self.logprobs += list(logprobs)
    self.generated += list(generated)


def run(engine, prompts: Sequence[str], *, sampling: SamplingParams, seed: int,
        group_size: int, batch_size: int | None) -> Rollout:
  """`RolloutEngine.run` under the continuous schedule (same arguments and result).

  The sampler batch is `rows_in_flight` slots, or (batch_size or len(prompts)) x group_size.
  """
  from rag_r1_jax.rollout.engine import _Row  # noqa: PLC0415  (engine imports this module)
  settings = engine.settings
  if jax.process_count() > 1:
    raise ValueError("config.rollout.schedule='continuous' refills rows one process at a time "
                     "and runs in a single-process run only; use 'sync' with several processes")
  num_prompts = len(prompts)
  padded_prompts = batch_size or num_prompts
  if padded_prompts < num_prompts:
    raise ValueError(f"batch_size {batch_size} < {num_prompts} prompts")
  slots = settings.rows_in_flight or padded_prompts * group_size
  if slots % group_size:
    raise ValueError(f"config.rollout.rows_in_flight={slots} must be a multiple of the "
                     f"group size {group_size} (rl.group_size): a group shares one prefill")
  if settings.decode_chunk_steps <= 0:
    raise ValueError(f"config.rollout.decode_chunk_steps={settings.decode_chunk_steps} must be "
                     "positive")
  sampler = engine.sampler
  prompt_ids = engine.encode_prompts(prompts)
  decode_settings = sampler_lib.DecodeSettings(sampling, settings.max_turn_tokens,
                                               chunk_steps=settings.decode_chunk_steps)
  num_rows = num_prompts * group_size
  rows = [_Row(len(prompt_ids[b // group_size]), len(prompt_ids[b // group_size]))
          for b in range(num_rows)]
  paths = [_Trajectory(list(prompt_ids[b // group_size]), [0.0] * rows[b].prompt_length,
                       [False] * rows[b].prompt_length) for b in range(num_rows)]
  slot_row: list[int | None] = [None] * slots  # the row each slot decodes
  running: set[int] = set()  # slots whose row is decoding
  queue = collections.deque(range(num_prompts))
  ready: dict[int, str] = {}  # row -> observation text to append at the next boundary
  held: dict[int, tuple[tuple[str, ...], str | None]] = {}  # row -> (queries, note), not sent
  in_flight = None  # (future of {query: docs}, {row: (queries, note)})
  row_steps: list[tuple[int, int]] = []
  idle: collections.Counter = collections.Counter()  # idle row-steps by cause (IDLE_CAUSES)
  total_watch, decode_watch, retrieval_watch = (timing.Stopwatch() for _ in range(3))

  def collect(done) -> None:
    future, searched = done
    observations = {b: note for b, (_, note) in searched.items() if note is not None}
    engine.information_into(observations, {b: q for b, (q, _) in searched.items()},
                            future.result())
    ready.update(observations)

  smaller = _drained_batches(slots, sampler)
  pace = _Pace(settings.decode_chunk_steps)
  with total_watch(), concurrent.futures.ThreadPoolExecutor(1) as pool:
    state = sampler.init(slots, jax.random.key(seed))
    while True:
      if in_flight is not None and in_flight[0].done():
        collect(in_flight)
        in_flight = None
      if held and in_flight is None:
        unique = engine.distinct_queries({b: q for b, (q, _) in held.items()})
        in_flight, held = (pool.submit(pace.timed_search, engine.search, unique), held), {}
      # Observations first, then new groups into the free slots.
      slot_of = {b: s for s, b in enumerate(slot_row) if b is not None}
      append_slots, chunks = [], []
      for b, text in sorted(ready.items()):
        ids = engine.observation_ids(rows[b], len(paths[b].tokens), text)
        if ids is None:  # finished with 'length'
          slot_row[slot_of[b]] = None
          continue
        append_slots.append(slot_of[b])
        chunks.append(ids)
        paths[b].extend(ids, [0.0] * len(ids), [False] * len(ids))
      ready.clear()
      free = [s for s, b in enumerate(slot_row) if b is None]
      admitted, copies = set(), ([], [])
      while queue and len(free) >= group_size:
        q = queue.popleft()
        members, free = free[:group_size], free[group_size:]
        for g, s in enumerate(members):
          slot_row[s] = q * group_size + g
        admitted.update(members)
        append_slots.append(members[0])
        chunks.append(prompt_ids[q])
        copies[0].extend([members[0]] * (group_size - 1))
        copies[1].extend(members[1:])
      with decode_watch():
        # One prefill per chunk width: a prompt is not padded to an observation's width. A
        # prompt's slot is emptied in the same call; its group's other slots are copies.
        by_width = collections.defaultdict(list)
        for s, ids in zip(append_slots, chunks):
          by_width[sampler_lib.bucket(len(ids))].append((s, ids, s in admitted))
        for group in by_width.values():
          state = sampler.append_rows(state, *zip(*group))
        state = sampler.copy_rows(state, *copies)
      running.update(append_slots, copies[1])
      live = [s for s, b in enumerate(slot_row) if b is not None]
      while not queue and smaller and len(live) <= smaller[0]:
        # Nothing left to admit: the live rows move into a smaller batch.
        with decode_watch():
          state = sampler.take_rows(state, live, smaller[0])
        running = {i for i, s in enumerate(live) if s in running}
        slot_row = [slot_row[s] for s in live] + [None] * (smaller[0] - len(live))
        live, smaller = list(range(len(live))), smaller[1:]

      if not running:
        if in_flight is not None:
          with retrieval_watch():
            concurrent.futures.wait([in_flight[0]])
          continue
        if held or ready:
          continue
        assert not queue and all(b is None for b in slot_row), (queue, slot_row)
        break

      starts = [len(paths[b].tokens) if b is not None else 0 for b in slot_row]
      # Return at the first stop while a stopped row has somewhere to go (a prompt waits for
      # its slot, its search can be sent, or the batch can shrink); at the retrieval's expected
      # end while one runs.
      useful_stop = bool(queue) or in_flight is None or bool(smaller)
      start = time.perf_counter()
      with decode_watch():
        state = sampler.decode(state, decode_settings,
                               max_steps=pace.steps_left(in_flight is not None),
                               stop_after=1 if useful_stop else None)
        chunk = sampler.fetch_turn(state, starts, settings.decode_chunk_steps)
      new = {s: int(chunk["lengths"][s]) - starts[s] for s in running}
      steps = max(new.values())
      pace.decoded(steps, time.perf_counter() - start)
      row_steps.append((sum(new.values()), steps * len(slot_row)))
      idle.update(_idle_causes(steps, new, slot_row, running, held, bool(queue)))
      for s in sorted(running):
        b, n = slot_row[s], new[s]
        paths[b].extend(chunk["tokens"][s, :n].tolist(), chunk["logprobs"][s, :n].tolist(),
                        chunk["generated"][s, :n].tolist())
        status = int(chunk["status"][s])
        if status == sampler_lib.RUNNING:
          continue
        running.discard(s)
        row = rows[b]
        text, queries = engine.advance(row, paths[b].tokens[row.turn_start:], status)
        if row.finish_reason is not None:
          slot_row[s] = None
        elif queries:
          held[b] = (queries, text)
        else:
          ready[b] = text

  rollout = _rollout(engine, paths, rows, group_size, row_steps,
                     (total_watch, decode_watch, retrieval_watch))
  rollout.idle_row_steps = {cause: idle[cause] for cause in IDLE_CAUSES}
  return rollout


def _drained_batches(slots: int, sampler) -> list[int]:
  """The smaller batches a drained rollout moves into: halves of `slots`, at least an eighth,
  each a whole number of rows per device (one compilation of each per-row function apiece)."""
  devices = 1 if sampler.mesh is None else sampler.mesh.devices.size
  sizes = [slots >> k for k in (1, 2, 3)]
  return [n for n in sizes if n and (slots % n == 0) and n % devices == 0]


class _Pace:
  """Host-side estimates of a decode step's and a retrieval call's seconds, to end a decode
  call about when the retrieval in flight is done."""

  def __init__(self, chunk_steps: int):
    self.chunk_steps = chunk_steps
    self.step_seconds = self.search_seconds = self.search_start = None

  def timed_search(self, search, queries):
    self.search_start = time.perf_counter()
    out = search(queries)
    self.search_seconds = time.perf_counter() - self.search_start
    return out

  def steps_left(self, searching: bool) -> int:
    """Steps until the retrieval in flight should be done (the chunk when not searching or
    not yet known)."""
    if not searching or self.step_seconds is None or self.search_seconds is None:
      return self.chunk_steps
    left = self.search_seconds - (time.perf_counter() - (self.search_start or 0.0))
    return int(min(max(math.ceil(left / self.step_seconds), 1), self.chunk_steps))

  def decoded(self, steps: int, seconds: float) -> None:
    if steps:
      step = seconds / steps
      self.step_seconds = step if self.step_seconds is None else 0.5 * (self.step_seconds + step)


def _idle_causes(steps: int, new: dict[int, int], slot_row: list, running: set, held: dict,
                 queued: bool) -> dict[str, int]:
  """The idle row-steps of a decode call of `steps` steps, by cause (before the call's rows
  are parsed: `running` and `held` as the call found them, `new` the tokens each running
  slot decoded)."""
  waiting = [b for s, b in enumerate(slot_row) if b is not None and s not in running]
  free = sum(b is None for b in slot_row)
  return {"turn_end": steps * len(running) - sum(new.values()),
          "retrieval_queued": steps * sum(b in held for b in waiting),
          "retrieval_running": steps * sum(b not in held for b in waiting),
          "free_queue_waiting": steps * free if queued else 0,
          "free_queue_empty": steps * free if not queued else 0}


def _rollout(engine, paths: list[_Trajectory], rows, group_size: int,
             row_steps: list[tuple[int, int]], watches) -> Rollout:
  """The rows' trajectories as `build_rollout` takes a sampler's fetch, in row order."""
  total_watch, decode_watch, retrieval_watch = watches
  n = len(rows)
  lengths = np.array([len(p.tokens) for p in paths], np.int32)
  width = min(sampler_lib.bucket(int(lengths.max(initial=1))), engine.sampler.capacity)
  host = {"tokens": np.zeros((n, width), np.int32), "logprobs": np.zeros((n, width), np.float32),
          "generated": np.zeros((n, width), bool), "lengths": lengths}
  records = []
  for b, (path, row) in enumerate(zip(paths, rows)):
    host["tokens"][b, :lengths[b]] = path.tokens
    host["logprobs"][b, :lengths[b]] = path.logprobs
    host["generated"][b, :lengths[b]] = path.generated
    response = engine.tokenizer.decode(path.tokens[row.prompt_length:], skip_special_tokens=False)
    records.append(RowRecord(
        prompt_index=b // group_size, response_text=response, answer=row.answer,
        turns=row.searches, queries_per_turn=list(row.queries_per_turn),
        finish_reason=row.finish_reason or "unfinished",
        generated_tokens=int(sum(path.generated)), prompt_tokens=row.prompt_length,
        total_tokens=int(lengths[b]),
        decode_seconds=decode_watch.seconds / max(n, 1),
        retrieval_seconds=retrieval_watch.seconds / max(n, 1),
        total_seconds=total_watch.seconds / max(n, 1),
        compile_seconds=total_watch.compile_seconds / max(n, 1)))
  return build_rollout(host, list(range(n)), records, group_size, row_steps)
