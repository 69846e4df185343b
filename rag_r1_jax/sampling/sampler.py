"""A pure-functional, jitted sampler that can pause rows, append text to them, and resume.

Every row keeps its own length: token j of a row lives at cache index j. `append` writes a
chunk per row (a prompt, an observation; rows may get nothing) at each row's own length in
one batched prefill; `decode` is one `jax.lax.while_loop` that samples until no row is
running. A row stops on an EOS / chat-end token, on a stop string (`</search>`, `</answer>`),
on its per-turn token budget, or when its cache is full; the others keep decoding. Nothing
before a row's length is ever recomputed.

`decode` can also return every N steps (`DecodeSettings.chunk_steps`), rows mid-turn kept
RUNNING, and `reset_rows` / `append_rows` / `copy_rows` refill single rows while the others
keep their caches: the continuous rollout schedule's slots (rollout/continuous.py).

Shapes are static: the batch and cache capacity are fixed per Sampler, and chunk widths are
padded to buckets (`bucket`), so the number of compilations is small and bounded. The jitted
functions belong to a `DecodeProgram` (graph, capacity, block size, mesh), shared by every
Sampler of an equal program: a sampler for another model of the same config reuses their
executables.

On a mesh the rows are split over the data and fsdp axes (each device decodes its own rows
and holds their cache) and the weights are held in the compute dtype in the decode layout,
`sharding.DECODE_RULES`, under which a decode step gathers no weights. The trainer's
float32 parameters are converted to it once per `update_params` (as veRL's hybrid engine
re-shards for vLLM).
"""

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rag_r1_jax import multihost, protocol, sharding
from rag_r1_jax.models import kv_cache as kvc
from rag_r1_jax.models import params as params_lib
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.models.decoder import Decoder
from rag_r1_jax.sampling import sampling_fns, stop_strings

# Row status codes.
RUNNING, STOPPED, TURN_LIMIT, EOS, LENGTH, IDLE = range(6)
MIN_BUCKET = 16


@flax.struct.dataclass
class SamplerState:
  cache: kvc.KVCache  # k, v: [layer][block] [batch, kv_heads, block, head_dim]; lengths [batch]
  tokens: jax.Array  # [batch, capacity] int32: every token of the row, at its cache index
  logprobs: jax.Array  # [batch, capacity] float32: policy log-prob of generated tokens, else 0
  generated: jax.Array  # [batch, capacity] bool: True where the policy sampled the token
  next_logits: jax.Array  # [batch, vocab] float32: logits after the row's last append
  status: jax.Array  # [batch] int32: RUNNING, STOPPED, ...
  stop_index: jax.Array  # [batch] int32: which stop string ended the turn, -1 if none
  stop_states: jax.Array  # [batch, num_stop_strings] int32: automaton states
  turn_tokens: jax.Array  # [batch] int32: tokens generated since the row last resumed
  # A decode call that ends at its step limit (`DecodeSettings.chunk_steps`) leaves rows
  # mid-turn RUNNING; the token the loop sampled for each of them is kept here, and the next
  # call feeds it instead of sampling from `next_logits` (which only an append sets).
  pending_token: jax.Array  # [batch] int32
  pending_logprob: jax.Array  # [batch] float32
  resume_pending: jax.Array  # [batch] bool: the next decode feeds pending_token
  rng: jax.Array  # PRNG key

  @property
  def lengths(self) -> jax.Array:
    return self.cache.lengths


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """Static settings of the decode loop (hashable).

  chunk_steps: 0 decodes until no row is running (at most max_turn_tokens steps, one turn);
  N > 0 returns after at most N steps, rows mid-turn still RUNNING (a continuous schedule's
  boundary: the host refills and resumes rows between calls).
  """
  sampling: sampling_fns.SamplingParams
  max_turn_tokens: int
  chunk_steps: int = 0


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """The chunk width for n tokens: a multiple of `minimum` up to 8 * minimum (16, 32, ..., 128),
  then the smallest 2^k or 3 * 2^(k-2) >= n (192, 256, 384, 512, ...).

  Prefill cost grows with the padded width, and prompts and observations are mostly 30-130
  tokens: powers of two padded 65-90-token chunks to 128 (measured: mq's 74-token prompt and
  73-token observation cost more than sq's two extra decode rounds). Up to 128 padding wastes
  under `minimum` tokens, beyond it under a third of the width; a capacity of 4096 has 18 widths.
  """
  n = max(int(n), 1)
  if n <= 8 * minimum:
    return -(-n // minimum) * minimum
  power = 1 << (n - 1).bit_length()
  return power * 3 // 4 if n <= power * 3 // 4 else power


class _Tables(NamedTuple):
  """The arrays a sampler's decode reads besides the weights: the stop-string automaton
  (`stop_strings.StopTables`) and the EOS ids ([k] int32, [-1] if none)."""
  next_state: jax.Array
  matched: jax.Array
  eos: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeProgram:
  """What the jitted functions read besides their arguments: static and hashable, no arrays.

  Samplers with equal programs (models of one graph, e.g. one DecoderConfig, at one capacity,
  block size, stop-string count and mesh) share their jitted functions (`_functions`), so a
  new sampler reuses the executables an earlier one compiled. Weights, the stop-string tables
  and EOS ids are arguments.
  """
  graphdef: nnx.GraphDef
  cfg: DecoderConfig
  capacity: int
  block_size: int
  num_stop_strings: int
  mesh: Mesh | None = None

  def model(self, params) -> Decoder:
    return nnx.merge(self.graphdef, params)

  def append(self, params, state: SamplerState, chunk, chunk_lengths,
             constrain: bool = True) -> SamplerState:
    """chunk [batch, width] int32, chunk_lengths [batch] int32."""
    batch, width = chunk.shape
    start = state.lengths
    idx = kvc.chunk_write_indices(start, chunk_lengths, width, self.capacity)
    rows = jnp.arange(batch)[:, None]
    tokens = state.tokens.at[rows, idx].set(chunk, mode="drop")
    logprobs = state.logprobs.at[rows, idx].set(0.0, mode="drop")
    generated = state.generated.at[rows, idx].set(False, mode="drop")
    last = jnp.maximum(chunk_lengths - 1, 0)
    logits, cache = self.model(params)(chunk, cache=state.cache, chunk_lengths=chunk_lengths,
                                       logits_at=last)
    got = chunk_lengths > 0
    state = state.replace(
        cache=cache, tokens=tokens, logprobs=logprobs, generated=generated,
        next_logits=jnp.where(got[:, None], logits, state.next_logits),
        status=jnp.where(got, RUNNING, state.status),
        stop_index=jnp.where(got, -1, state.stop_index),
        stop_states=jnp.where(got[:, None], 0, state.stop_states),
        turn_tokens=jnp.where(got, 0, state.turn_tokens),
        resume_pending=state.resume_pending & ~got)
    return self.constrain(state) if constrain else state

  def decode(self, tables: _Tables, params, state: SamplerState, settings: DecodeSettings,
             bounds=None) -> SamplerState:
    """bounds [2] int32: (most steps, stopped rows to return at), see `Sampler.decode`; None:
    the settings' limit, however many rows stop."""
    if bounds is None:
      bounds = jnp.array([settings.chunk_steps or settings.max_turn_tokens,
                          state.status.shape[0] + 1], jnp.int32)
    model = self.model(params)
    batch = state.status.shape[0]
    rows = jnp.arange(batch)
    # A row with a full cache cannot take another token.
    state = state.replace(status=jnp.where(
        (state.status == RUNNING) & (state.lengths >= self.capacity), LENGTH, state.status))

    # The output projection made once per call, outside the loop: for a tied embedding the
    # transpose is then materialised once instead of the loop's dot reading the embedding
    # transposed every step (batch 8 on the 12M config: 4.7 -> 3.8 ms/step).
    head = model.output_head()
    layers = model.layer_weights()  # a scanned model's layers, sliced out once per call

    limit = jnp.minimum(settings.chunk_steps or settings.max_turn_tokens, bounds[0])
    started = state.status == RUNNING

    def cond(carry):
      state, _, _, steps = carry
      running = state.status == RUNNING
      stopped = jnp.sum(started & ~running)
      return jnp.any(running) & (steps < limit) & (stopped < bounds[1])

    def body(carry):
      state, token, logprob, steps = carry  # token, logprob [batch]: sampled from next_logits
      running = state.status == RUNNING
      idx = jnp.where(running, state.lengths, self.capacity)
      logits, cache = model(token[:, None], cache=state.cache,
                            chunk_lengths=running.astype(jnp.int32),
                            logits_at=jnp.zeros((batch,), jnp.int32), head=head,
                            layer_weights=layers)
      stop_states, matched = stop_strings.advance(state.stop_states, token, tables.next_state,
                                                  tables.matched)
      hit_stop = running & jnp.any(matched, axis=-1)
      is_eos = running & jnp.any(token[:, None] == tables.eos[None, :], axis=-1)
      turn_tokens = state.turn_tokens + running.astype(jnp.int32)
      status = state.status
      status = jnp.where(hit_stop, STOPPED, status)
      status = jnp.where(is_eos & ~hit_stop, EOS, status)
      still = running & (status == RUNNING)
      status = jnp.where(still & (turn_tokens >= settings.max_turn_tokens), TURN_LIMIT, status)
      still = running & (status == RUNNING)
      status = jnp.where(still & (cache.lengths >= self.capacity), LENGTH, status)
      state, next_token, next_logprob = sample(state, logits)
      state = state.replace(
          cache=cache,
          tokens=state.tokens.at[rows, idx].set(token, mode="drop"),
          logprobs=state.logprobs.at[rows, idx].set(logprob, mode="drop"),
          generated=state.generated.at[rows, idx].set(True, mode="drop"),
          status=status,
          stop_index=jnp.where(hit_stop, jnp.argmax(matched, axis=-1), state.stop_index),
          stop_states=jnp.where(running[:, None], stop_states, state.stop_states),
          turn_tokens=turn_tokens)
      return self.constrain(state), next_token, next_logprob, steps + 1

    def sample(state, logits):
      # The loop carries the sampled token, not the logits: the logits a step makes are only
      # sampled from (carrying them, or selecting them per running row, moved 8 MB per step
      # at batch 64 on a 32k vocabulary). `next_logits` thus keeps the last append's logits,
      # the only ones a later decode reads: a row resumes only after an append.
      rng, key = jax.random.split(state.rng)
      token, logprob = sampling_fns.sample_with_logprob(logits, key, settings.sampling)
      return state.replace(rng=rng), token, logprob

    # The key is split for the first token only when some running row needs one from
    # next_logits, so a turn decoded in chunks draws the same tokens as in one call.
    fresh = jnp.any((state.status == RUNNING) & ~state.resume_pending)
    rng = state.rng
    state, token, logprob = sample(state, state.next_logits)
    state = state.replace(rng=jax.lax.cond(fresh, lambda: state.rng, lambda: rng))
    token = jnp.where(state.resume_pending, state.pending_token, token)
    logprob = jnp.where(state.resume_pending, state.pending_logprob, logprob)
    state, token, logprob, _ = jax.lax.while_loop(cond, body, (state, token, logprob, jnp.int32(0)))
    # A row still running has used less than its turn budget (the body marks TURN_LIMIT when
    # it is used); it resumes from the token sampled after its last step.
    running = state.status == RUNNING
    return state.replace(pending_token=jnp.where(running, token, 0),
                         pending_logprob=jnp.where(running, logprob, 0.0),
                         resume_pending=running)

  def reset_rows(self, state: SamplerState, rows) -> SamplerState:
    """rows [r] int32 (out-of-range entries ignored)."""
    return self.constrain(_emptied(state, lambda x, value: x.at[rows].set(value, mode="drop")))

  def append_rows(self, params, state: SamplerState, rows, chunk, chunk_lengths, fresh
                  ) -> SamplerState:
    """rows [r] int32 (out-of-range: padding), chunk [r, width] int32, chunk_lengths [r] int32,
    fresh [r] bool: the row is emptied first.

    The rows are gathered into an r-row state, appended to as `append` does, and scattered
    back; padding rows read the last row and are dropped on the way back.
    """
    take = lambda x: jnp.take(x, rows, axis=0, mode="clip")  # noqa: E731
    put = lambda x, part: x.at[rows].set(part, mode="drop")  # noqa: E731
    sub = jax.tree.map(take, state.replace(rng=None))
    sub = _emptied(sub, lambda x, value: jnp.where(
        fresh.reshape((-1,) + (1,) * (x.ndim - 1)), value, x))
    sub = self.append(params, sub.replace(rng=state.rng), chunk, chunk_lengths, constrain=False)
    merged = jax.tree.map(put, state.replace(rng=None), sub.replace(rng=None))
    return self.constrain(merged.replace(rng=state.rng))

  def take_rows(self, state: SamplerState, rows) -> SamplerState:
    """rows [r] int32 -> an r-row state of those rows; an out-of-range entry: an empty IDLE row."""
    take = lambda x: jnp.take(x, rows, axis=0, mode="clip")  # noqa: E731
    sub = jax.tree.map(take, state.replace(rng=None))
    valid = rows < state.status.shape[0]
    sub = sub.replace(cache=sub.cache.replace(lengths=jnp.where(valid, sub.cache.lengths, 0)),
                      status=jnp.where(valid, sub.status, IDLE),
                      resume_pending=valid & sub.resume_pending, rng=state.rng)
    return self.constrain(sub)

  def copy_rows(self, state: SamplerState, src, dst) -> SamplerState:
    """src, dst [r] int32: row dst[i] <- row src[i] (out-of-range dst: ignored)."""
    copy = lambda x: x.at[dst].set(jnp.take(x, src, axis=0), mode="drop")  # noqa: E731
    merged = jax.tree.map(copy, state.replace(rng=None))
    return self.constrain(merged.replace(rng=state.rng))

  def window(self, state: SamplerState, starts, width: int) -> dict[str, jax.Array]:
    """starts [batch] int32 -> each row's `width` columns from its start, plus per-row fields."""
    idx = starts[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
    take = lambda x: jnp.take_along_axis(x, idx, axis=1, mode="fill", fill_value=0)  # noqa: E731
    out = {k: take(getattr(state, k)) for k in ("tokens", "logprobs", "generated")}
    out |= {"status": state.status, "stop_index": state.stop_index, "lengths": state.lengths}
    if self.mesh is None:
      return out
    return {k: jax.lax.with_sharding_constraint(v, self.by_row(v.shape)) for k, v in out.items()}

  def replicate(self, state: SamplerState, rng, n: int) -> SamplerState:
    rep = lambda x: jnp.repeat(x, n, axis=0)
    by_batch = lambda blocks: jax.tree.map(rep, blocks)  # [batch, ..] each
    cache = kvc.KVCache(k=by_batch(state.cache.k), v=by_batch(state.cache.v),
                        lengths=rep(state.cache.lengths))
    fields = {f: rep(getattr(state, f)) for f in (
        "tokens", "logprobs", "generated", "next_logits", "status", "stop_index", "stop_states",
        "turn_tokens", "pending_token", "pending_logprob", "resume_pending")}
    return self.constrain(SamplerState(cache=cache, rng=rng, **fields))

  # ---- sharding ------------------------------------------------------------------------------

  def by_row(self, shape: Sequence[int]) -> jax.sharding.NamedSharding:
    """A [batch, ...] array's rows split over the data axes."""
    return sharding.named_sharding(self.mesh, ("batch",) + (None,) * (len(shape) - 1), shape)

  def shardings(self, batch: int) -> SamplerState:
    by_row = lambda *shape: self.by_row((batch,) + shape)  # noqa: E731
    return SamplerState(
        cache=kvc.cache_shardings(self.mesh, self.cfg, batch, self.capacity, self.block_size),
        tokens=by_row(self.capacity), logprobs=by_row(self.capacity),
        generated=by_row(self.capacity), next_logits=by_row(self.cfg.vocab_size),
        status=by_row(), stop_index=by_row(), stop_states=by_row(self.num_stop_strings),
        turn_tokens=by_row(), pending_token=by_row(), pending_logprob=by_row(),
        resume_pending=by_row(), rng=sharding.replicated(self.mesh))

  def constrain(self, state: SamplerState) -> SamplerState:
    if self.mesh is None:
      return state
    return jax.lax.with_sharding_constraint(state, self.shardings(state.status.shape[0]))


@dataclasses.dataclass(frozen=True)
class _Functions:
  """A program's jitted functions (their names as `compile_count` reports them)."""
  _append: Callable
  _decode: Callable
  _replicate: Callable
  _window: Callable
  _reset_rows: Callable
  _append_rows: Callable
  _copy_rows: Callable
  _take_rows: Callable


@functools.cache
def _functions(program: DecodeProgram) -> _Functions:
  """The jitted functions of `program`, one set per distinct program in the process.

  Keyed by the program (not a static argument of each call), so a call hashes no graph.
  `jax.clear_caches()` drops their executables.
  """
  p = program
  return _Functions(
      _append=jax.jit(p.append, donate_argnums=(1,)),
      _decode=jax.jit(p.decode, static_argnums=(3,), donate_argnums=(2,)),
      _replicate=jax.jit(p.replicate, static_argnums=(2,)),
      _window=jax.jit(p.window, static_argnums=(2,)),
      _reset_rows=jax.jit(p.reset_rows, donate_argnums=(0,)),
      _append_rows=jax.jit(p.append_rows, donate_argnums=(1,)),
      _copy_rows=jax.jit(p.copy_rows, donate_argnums=(0,)),
      _take_rows=jax.jit(p.take_rows))


class Sampler:
  """Host-side prefill / decode / replicate for one model and capacity; the jitted functions
  are its `DecodeProgram`'s, shared with every sampler of an equal program."""

  def __init__(self, model: Decoder, tokenizer, *, capacity: int,
               stop_strings_: Sequence[str] = protocol.STOP_STRINGS,
               eos_token_ids: Sequence[int] = (), mesh: Mesh | None = None,
               block_size: int | None = None):
    self.cfg = model.cfg
    self.capacity = int(capacity)
    # Cache positions per block (attention granularity); None: kvc.auto_block_size(capacity).
    self.block_size = int(block_size or kvc.auto_block_size(self.capacity))
    graphdef, params = nnx.split(model)
    self.stop_strings = tuple(stop_strings_)
    self._set_program(DecodeProgram(graphdef, self.cfg, self.capacity, self.block_size,
                                    len(self.stop_strings), mesh))
    self._to_decode_layout = None
    if mesh is not None:
      self._to_decode_layout = jax.jit(
          functools.partial(decode_dtypes, dtype=self.cfg.compute_dtype),
          out_shardings=params_lib.state_shardings(model, mesh, sharding.DECODE_RULES))
    self.params = self._decode_params(params)
    vocab = self.cfg.vocab_size
    stop = stop_strings.cached_stop_tables(
        self.stop_strings, tuple(stop_strings.token_strings(tokenizer, vocab)))
    eos = sorted({int(i) for i in eos_token_ids if i is not None and 0 <= int(i) < vocab})
    tables = jax.tree.map(jnp.asarray, _Tables(stop.next_state, stop.matched,
                                               np.asarray(eos or [-1], np.int32)))
    self._tables = tables if mesh is None else multihost.put(tables, sharding.replicated(mesh))
    self.prefill_tokens = 0  # host-side count of tokens sent through `append` (for tests)

  def _set_program(self, program: DecodeProgram) -> None:
    self._program = program
    self._fns = _functions(program)

  @property
  def graphdef(self) -> nnx.GraphDef:
    return self._program.graphdef

  @property
  def mesh(self) -> Mesh | None:
    return self._program.mesh

  @mesh.setter
  def mesh(self, mesh: Mesh | None) -> None:
    """Another mesh for the state's shardings and the functions' traces (the dry run's)."""
    self._set_program(dataclasses.replace(self._program, mesh=mesh))

  def lower_decode(self, params, state: SamplerState, settings: DecodeSettings):
    """The decode call lowered for these (possibly abstract) arguments, for memory analyses
    (`.compile().memory_analysis()`)."""
    return self._fns._decode.lower(self._tables, params, state, settings)

  def update_params(self, model_or_params) -> None:
    """Points the sampler at new weights (after an optimizer step); no recompilation.

    On a mesh the sampler holds its own copy in the decode layout (see the module docstring).
    """
    if isinstance(model_or_params, nnx.Module):
      model_or_params = nnx.state(model_or_params)
    self.params = self._decode_params(model_or_params)

  def _decode_params(self, params):
    if self._to_decode_layout is None:
      return params
    with self._mesh_context():
      return self._to_decode_layout(params)

  # ---- host-side API -------------------------------------------------------------------------

  def init(self, batch_size: int, rng: jax.Array) -> SamplerState:
    """An empty state: every row IDLE at length 0."""
    cache = kvc.init_cache(self.cfg, batch_size, self.capacity, block_size=self.block_size)
    state = SamplerState(
        cache=cache,
        tokens=jnp.zeros((batch_size, self.capacity), jnp.int32),
        logprobs=jnp.zeros((batch_size, self.capacity), jnp.float32),
        generated=jnp.zeros((batch_size, self.capacity), jnp.bool_),
        next_logits=jnp.zeros((batch_size, self.cfg.vocab_size), jnp.float32),
        status=jnp.full((batch_size,), IDLE, jnp.int32),
        stop_index=jnp.full((batch_size,), -1, jnp.int32),
        stop_states=jnp.zeros((batch_size, len(self.stop_strings)), jnp.int32),
        turn_tokens=jnp.zeros((batch_size,), jnp.int32),
        pending_token=jnp.zeros((batch_size,), jnp.int32),
        pending_logprob=jnp.zeros((batch_size,), jnp.float32),
        resume_pending=jnp.zeros((batch_size,), jnp.bool_),
        rng=rng)
    return self._place(state)

  def append(self, state: SamplerState, chunks: Sequence[Sequence[int] | None]) -> SamplerState:
    """Appends chunks[b] to row b (None or empty: untouched) and marks those rows RUNNING."""
    batch = state.status.shape[0]
    assert len(chunks) == batch, (len(chunks), batch)
    lengths = np.array([len(c) if c is not None else 0 for c in chunks], np.int32)
    # In a multi-process run each process passes chunks for its own rows only (others None):
    # the width is agreed on, and each process fills only its devices' rows.
    width = bucket(multihost.max_over_processes(int(lengths.max()) if batch else 1))
    padded = np.zeros((batch, width), np.int32)
    for b, chunk in enumerate(chunks):
      if chunk is not None and len(chunk):
        padded[b, :len(chunk)] = np.asarray(chunk, np.int32)
    self.prefill_tokens += int(lengths.sum())
    with self._mesh_context():
      return self._fns._append(self.params, state, *self._put_rows(padded, lengths))

  def decode(self, state: SamplerState, settings: DecodeSettings, *, max_steps: int | None = None,
             stop_after: int | None = None) -> SamplerState:
    """Samples until every row has stopped (one jitted while_loop), or earlier:

    after `max_steps` steps (None: settings' limit; it never exceeds it), or once `stop_after`
    rows that were running have stopped (None: never). Both are traced, so any values share
    one compilation; a continuous schedule returns as soon as a freed slot has work to take.
    """
    batch = state.status.shape[0]
    limit = settings.chunk_steps or settings.max_turn_tokens
    bounds = np.array([limit if max_steps is None else min(max(int(max_steps), 1), limit),
                       batch + 1 if stop_after is None else max(int(stop_after), 1)], np.int32)
    with self._mesh_context(), sharding.activation_rules(sharding.DECODE_RULES):
      return self._fns._decode(self._tables, self.params, state, settings, jnp.asarray(bounds))

  def replicate(self, state: SamplerState, n: int) -> SamplerState:
    """Repeats each row n times (row b -> rows b*n .. b*n+n-1): GRPO groups share a prefill."""
    if n == 1:
      return state
    with self._mesh_context():
      return self._fns._replicate(state, state.rng, n)

  # ---- per-row slots (a continuous schedule refills rows while others decode) ---------------

  def reset_rows(self, state: SamplerState, rows: Sequence[int]) -> SamplerState:
    """Empties these rows (length 0, IDLE, no tokens, fresh stop states) for a new prompt."""
    if not len(rows):
      return state
    with self._mesh_context():
      return self._fns._reset_rows(state, self._row_ids(rows, state))

  def append_rows(self, state: SamplerState, rows: Sequence[int],
                  chunks: Sequence[Sequence[int]], fresh: Sequence[bool] | None = None
                  ) -> SamplerState:
    """Appends chunks[i] to row rows[i] (marks it RUNNING), prefilling only these rows; a row
    with fresh[i] is emptied first, as `reset_rows` does (a new prompt in a reused slot).

    Equals `append` with those chunks and None elsewhere, at a cost that grows with the
    number of rows given (padded to `row_bucket`) instead of the batch.
    """
    assert len(rows) == len(chunks) and all(len(c) for c in chunks), (rows, chunks)
    if not len(rows):
      return state
    ids = self._row_ids(rows, state)
    lengths = np.zeros(ids.shape, np.int32)
    lengths[:len(chunks)] = [len(c) for c in chunks]
    empty = np.zeros(ids.shape, bool)
    empty[:len(chunks)] = False if fresh is None else fresh
    padded = np.zeros((len(ids), bucket(int(lengths.max()))), np.int32)
    for i, chunk in enumerate(chunks):
      padded[i, :len(chunk)] = np.asarray(chunk, np.int32)
    self.prefill_tokens += int(lengths.sum())
    with self._mesh_context():
      return self._fns._append_rows(self.params, state, ids, jnp.asarray(padded),
                                    jnp.asarray(lengths), jnp.asarray(empty))

  def copy_rows(self, state: SamplerState, src: Sequence[int], dst: Sequence[int]
                ) -> SamplerState:
    """Row dst[i] becomes a copy of row src[i] (cache and state): a GRPO group's members take
    their prompt's prefill from the row that was prefilled."""
    assert len(src) == len(dst), (src, dst)
    if not len(dst):
      return state
    with self._mesh_context():
      return self._fns._copy_rows(state, self._row_ids(src, state, pad=0),
                                  self._row_ids(dst, state))

  def take_rows(self, state: SamplerState, rows: Sequence[int], batch: int) -> SamplerState:
    """A `batch`-row state whose row i is row rows[i] (cache and state), the rest empty and
    IDLE: a drained batch decodes its last rows in fewer slots (one compile per `batch`)."""
    assert len(rows) <= batch, (rows, batch)
    if jax.process_count() > 1:
      raise ValueError("per-row refills (config.rollout.schedule='continuous') run in a "
                       "single-process run only")
    ids = np.full((batch,), state.status.shape[0], np.int32)
    ids[:len(rows)] = rows
    with self._mesh_context():
      return self._fns._take_rows(state, jnp.asarray(ids))

  def _row_ids(self, rows: Sequence[int], state: SamplerState, pad: int | None = None
               ) -> jax.Array:
    """rows padded to `row_bucket` with `pad` (default: the batch size, an index writes drop)."""
    if jax.process_count() > 1:
      raise ValueError("per-row refills (config.rollout.schedule='continuous') run in a "
                       "single-process run only")
    batch = state.status.shape[0]
    ids = np.full((row_bucket(len(rows), batch),), batch if pad is None else pad, np.int32)
    ids[:len(rows)] = rows
    return jnp.asarray(ids)

  def fetch(self, state: SamplerState, width: int | None = None) -> dict[str, np.ndarray]:
    """Every row's tokens, log-probs and generated flags ([batch, width]: the first `width`
    columns, None: all), status, stop_index and lengths ([batch]), gathered from every
    process (a collective); never the cache."""
    cut = lambda x: x if width is None else x[:, :width]  # noqa: E731
    out = multihost.fetch({k: cut(getattr(state, k)) for k in ("tokens", "logprobs", "generated")}
                          | {k: getattr(state, k) for k in ("status", "stop_index", "lengths")})
    return {k: np.asarray(v) for k, v in out.items()}

  def fetch_turn(self, state: SamplerState, starts: Sequence[int], width: int
                 ) -> dict[str, np.ndarray]:
    """What the host reads after a decode call, for this process's rows only (no collective).

    tokens, logprobs, generated: [batch, width], row b's columns starts[b] .. starts[b]+width-1
    (0 / False past the capacity), so only the turn's new tokens travel; status, stop_index,
    lengths: [batch]. Rows other processes decode are zeros.
    """
    (starts,) = self._put_rows(np.asarray(starts, np.int32))
    with self._mesh_context():
      return multihost.fetch_local(self._fns._window(state, starts, width))

  # ---- sharding ------------------------------------------------------------------------------

  def _mesh_context(self):
    import contextlib
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def state_shardings(self, batch: int) -> SamplerState:
    """A `batch`-row state's shardings on the mesh."""
    return self._program.shardings(batch)

  def _put_rows(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Per-row host arrays ([batch, ...]) split over the rows' devices; a process fills only
    its own devices' rows, so rows other processes own may hold anything."""
    if self.mesh is None:
      return tuple(jnp.asarray(x) for x in arrays)
    return tuple(multihost.put(x, self._program.by_row(x.shape)) for x in arrays)

  def _place(self, state: SamplerState) -> SamplerState:
    if self.mesh is None:
      return state
    return multihost.put(state, self.state_shardings(state.status.shape[0]))


def _emptied(state: SamplerState, empty) -> SamplerState:
  """`state` with rows emptied (length 0, IDLE, no tokens): `empty(x, value)` writes `value`
  into the rows of the per-row array x that are emptied."""
  return state.replace(
      cache=state.cache.replace(lengths=empty(state.cache.lengths, 0)),
      tokens=empty(state.tokens, 0), logprobs=empty(state.logprobs, 0.0),
      generated=empty(state.generated, False), next_logits=empty(state.next_logits, 0.0),
      status=empty(state.status, IDLE), stop_index=empty(state.stop_index, -1),
      stop_states=empty(state.stop_states, 0), turn_tokens=empty(state.turn_tokens, 0),
      pending_token=empty(state.pending_token, 0),
      pending_logprob=empty(state.pending_logprob, 0.0),
      resume_pending=empty(state.resume_pending, False))


def row_bucket(n: int, batch: int) -> int:
  """How many rows a per-row call is padded to: the smallest power of two >= n, at most the
  batch (so a batch of B rows compiles each per-row function for about log2(B) row counts)."""
  return min(int(batch), 1 << max(int(n) - 1, 0).bit_length())


def decode_dtypes(params, dtype):
  """Floating weights wider than the compute `dtype` cast to it (the decoder casts each weight
  to the compute dtype where it reads it, so the values it computes are unchanged)."""
  def cast(x):
    wider = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > jnp.dtype(dtype).itemsize
    return x.astype(dtype) if wider else x
  return jax.tree.map(cast, params)


def compile_count(sampler: Sampler) -> dict[str, int]:
  """How many executables each jitted function of the sampler's program holds (bounded by the
  bucket count), counting those compiled for every sampler sharing the program: tests compare
  counts before and after the calls they bound."""
  return {field.name: getattr(sampler._fns, field.name)._cache_size()
          for field in dataclasses.fields(_Functions)}
