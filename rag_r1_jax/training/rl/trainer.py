"""The RL update of one rollout batch: score it once, then epochs x shuffled minibatches.

Host-side orchestration around the jitted steps of step.py. The rollout batch is a dict of
right-padded arrays (numpy or JAX):
  tokens, positions [B, T] int32; attention_mask [B, T] (1 on real tokens);
  loss_mask [B, T] float32 (1 only on tokens the policy generated);
  sampler_logprobs [B, T] float32 (0 off the mask); rewards [B] float32; group_ids [B] int32.
B must be a multiple of rl.mini_batch_size x rl.group_size (the minibatch rows). Old
log-probs (and reference log-probs, critic values) are recomputed by forward passes in
chunks of minibatch rows before any update; advantages are computed over the whole batch.
When the batch is ONE GRPO update (one epoch, one minibatch), the old policy is the policy
being updated: the update uses its own detached log-probs as the old ones, and the scoring
pass runs only for the reference log-probs, if any (without a reference it is skipped: a
quarter of the update's compute on the default config).
Every minibatch has the same static shape, so the step compiles once per sequence length.
With rl.length_bucket > 0 a minibatch's microbatches are instead rows of similar length,
each cut to its own width (`microbatch_plan`): their weighted gradients are summed on the
device and applied in one step, compiling once per width; the scoring pass cuts its chunks
the same way. PPO's critic trains in the same
steps unless rl.critic_epochs / rl.critic_mini_batch_size give it its own, then in a second
pass of epochs x shuffled minibatches after the actor's.

Besides the losses' metrics, the result carries where the time went: scoring_seconds (the
forward passes before the updates) and train_seconds (the updates), each without compilation,
which is in scoring_compile_seconds / train_compile_seconds.

The caller counts skipped steps: `streak = streak.update(metrics["skipped"] == 0, step)` with
optimizer.NonfiniteStreak(rl.max_nonfinite_steps).
"""

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rag_r1_jax import multihost, sharding, timing
from rag_r1_jax.rl import losses
from rag_r1_jax.training.rl import step as rl_step
from rag_r1_jax.training.train_state import TrainState
from rag_r1_jax.training.rl.step import RLHparams

TOKEN_FIELDS = ("tokens", "positions", "attention_mask", "loss_mask", "sampler_logprobs")
ROW_FIELDS = ("rewards", "group_ids")
_DTYPES = {"tokens": np.int32, "positions": np.int32, "attention_mask": np.int32,
           "loss_mask": np.float32, "sampler_logprobs": np.float32, "rewards": np.float32,
           "group_ids": np.int32}
# How per-update metrics combine into one row: the rest are means over applied updates.
_SUMMED = ("skipped", "critic_skipped")
_LAST = ("learning_rate", "critic_learning_rate")
_MAXED = ("ratio_max",)


def _mesh(state: TrainState) -> Mesh:
  return jax.tree.leaves(state.params)[0].sharding.mesh


def _host_batch(batch: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
  """The rollout batch as host arrays of the expected dtypes, checked for shape."""
  missing = [k for k in TOKEN_FIELDS + ROW_FIELDS if k not in batch]
  assert not missing, f"rollout batch lacks {missing}"
  out = {k: np.asarray(batch[k], _DTYPES[k]) for k in TOKEN_FIELDS + ROW_FIELDS}
  size, length = out["tokens"].shape
  for k in TOKEN_FIELDS:
    assert out[k].shape == (size, length), (k, out[k].shape, (size, length))
  for k in ROW_FIELDS:
    assert out[k].shape == (size,), (k, out[k].shape)
  if size % rows:
    raise ValueError(f"rollout batch of {size} rows is not a multiple of the minibatch "
                     f"(rl.mini_batch_size x rl.group_size = {rows} rows)")
  return out


def bucketed_width(lengths: np.ndarray, width: int, bucket: int) -> int:
  """The columns rows of these lengths need: the longest rounded up to a multiple of
  `bucket`, at most `width`."""
  return min(width, -(-max(int(lengths.max()), 1) // bucket) * bucket)


def _score_all(state: TrainState, host: dict[str, np.ndarray], hp: RLHparams,
               mesh: Mesh, old: bool = True) -> dict[str, np.ndarray]:
  """rl_step.score over the batch in chunks of microbatch rows (forward passes hold as many
  activations as a microbatch's backward does), gathered on the host [rows, width].

  With hp.length_bucket the chunks are rows of similar length, each cut to its longest row
  (`bucketed_width`), as the update's microbatches are: a short row's forward no longer runs
  at the longest row's width. Columns past a chunk's cut are padding, scored 0 either way.
  """
  model_fields = ("tokens", "positions", "attention_mask", "loss_mask")
  rows = hp.mini_batch_rows // hp.microbatches
  size, width = host["tokens"].shape
  lengths = host["attention_mask"].sum(axis=1)
  order = np.argsort(lengths, kind="stable") if hp.length_bucket else None
  passes = (["policy"] if old else []) + (["reference"] if state.has_reference else []) + (
      ["critic"] if state.critic is not None else [])
  name = f"rl scoring ({', '.join(passes)} forward)"
  out: dict[str, np.ndarray] = {}
  for start in range(0, size, rows):
    # Rows of similar length by index (a copy), else a plain slice (views of the host batch).
    chunk = order[start:start + rows] if order is not None else slice(start, start + rows)
    cut = bucketed_width(lengths[chunk], width, hp.length_bucket) if hp.length_bucket else width
    part = {k: host[k][chunk, :cut] for k in model_fields}
    with timing.compiling(name, _shape(part["tokens"])):
      scored = multihost.fetch(rl_step.score(state, sharding.put_rows(part, mesh), hp, old))
    for k, v in scored.items():
      out.setdefault(k, np.zeros((size, width), v.dtype))[chunk, :cut] = v
  return out


def _shape(tokens: np.ndarray) -> str:
  """A batch's [rows, width] in words, for the compile announcements."""
  return str(list(tokens.shape))


def single_on_policy_update(hp: RLHparams, rows: int) -> bool:
  """Whether a batch of `rows` is one GRPO update, needing no old log-probs (see above)."""
  return hp.algo.one_pass_on_policy and hp.epochs == 1 and rows == hp.mini_batch_rows


@jax.jit
def _split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  new, sub = jax.random.split(key)
  return new, sub


def combine_metrics(per_update: list[dict[str, float]], skipped: str = "skipped",
                    count: str = "updates") -> dict[str, float]:
  """One row of per-update metrics: skips summed, lr last, the rest averaged over applied ones.

  skipped / count: the skip flag's name and the name of the number of updates (the critic's
  own updates: "critic_skipped", "critic_updates").
  """
  applied = [m for m in per_update if m[skipped] == 0] or per_update
  out = {}
  for key in per_update[0]:
    if key in _SUMMED:
      out[key] = float(sum(m[key] for m in per_update))
    elif key in _LAST:
      out[key] = float(per_update[-1][key])
    elif key in _MAXED:
      out[key] = float(max(m[key] for m in applied))
    else:
      out[key] = float(np.mean([m[key] for m in applied]))
  out[count] = float(len(per_update))
  return out


def microbatch_plan(minibatch: Mapping[str, np.ndarray],
                    hp: RLHparams) -> list[tuple[dict[str, np.ndarray], float, float]]:
  """The minibatch as hp.microbatches (microbatch, loss weight, metric weight) triples, each
  microbatch cut to its own width.

  Rows are sorted by length, so a microbatch of short trajectories is not padded to the
  longest of the minibatch; each keeps the columns up to its longest row rounded up to a
  multiple of `hp.length_bucket` (at most the minibatch's width). The weights are
  losses.microbatch_weights': with rl.microbatch_weighting "global" the summed loss is the
  minibatch's own aggregate whatever the split (a microbatch's share of the masked tokens for
  token_mean, of the rows with a masked token for the seq_* modes, 1 for token_sum).
  """
  rows, width = minibatch["tokens"].shape
  assert rows % hp.microbatches == 0, (rows, hp.microbatches)
  lengths = minibatch["attention_mask"].sum(axis=1)
  order = np.argsort(lengths, kind="stable")
  parts = np.split(order, hp.microbatches)
  loss_w, metric_w = losses.microbatch_weights(
      [minibatch["loss_mask"][part] for part in parts], hp.loss_agg, hp.microbatch_weighting)
  plan = []
  for i, part in enumerate(parts):
    cut = bucketed_width(lengths[part], width, hp.length_bucket)
    micro = {k: v[part][:, :cut] if v.ndim == 2 else v[part] for k, v in minibatch.items()}
    plan.append((micro, float(loss_w[i]), float(metric_w[i])))
  return plan


def _trimmed_update(state: TrainState, minibatch: Mapping[str, np.ndarray], hp: RLHparams,
                    mesh: Mesh, parts: tuple[str, ...]) -> tuple[TrainState, dict]:
  """One optimizer update over `microbatch_plan`'s microbatches (rl.length_bucket > 0)."""
  micro_hp = dataclasses.replace(hp, microbatches=1)
  if hp.loss_agg == "seq_sum_norm" and hp.norm_length is None:  # the constant: the full width
    micro_hp = dataclasses.replace(micro_hp, norm_length=minibatch["tokens"].shape[1])
  grads = None
  for micro, weight, metric_weight in microbatch_plan(minibatch, hp):
    with timing.compiling("rl microbatch gradients", _shape(micro["tokens"])):
      part = rl_step.weighted_gradients(state, sharding.put_rows(micro, mesh), micro_hp,
                                       jnp.float32(weight), jnp.float32(metric_weight), parts)
    if grads is None:
      grads = part
    else:
      with timing.compiling("rl gradient sum", "the policy's gradients"):
        grads = rl_step.add_gradients(grads, part)
  with timing.compiling("rl optimizer step", "the policy's gradients"):
    return rl_step.apply_gradients(state, grads, hp)


def minibatch_logprob_fields(hp: RLHparams, on_policy: bool) -> list[str]:
  """The log-prob fields an update's minibatch carries besides tokens, masks and advantages."""
  fields = ["sampler_logprobs"] if on_policy or hp.rollout_is else []
  if not on_policy:
    fields.append("old_logprobs")
  if hp.algo.kl_in_loss and hp.kl_coef > 0:
    fields.append("ref_logprobs")
  return fields


def rl_update(state: TrainState, batch: Mapping[str, Any], config: Any,
              hp: Optional[RLHparams] = None,
              kl_coef: Optional[float] = None) -> tuple[TrainState, dict[str, float]]:
  """All updates of one rollout batch: (new state, metrics as Python floats).

  config: the run's ConfigDict (its rl section); or pass hp. kl_coef: PPO's reward KL
  coefficient for this batch (rl/kl_control.py; default hp.kl_coef). The state is donated:
  use only the returned one. Minibatch order comes from state.rng, so a restored state
  replays it.
  """
  mesh = _mesh(state)
  hp = hp or RLHparams.from_config(config, sharding.batch_shards(mesh))
  if hp.algo.critic and state.critic is None:
    raise ValueError(f"rl.algorithm={hp.algorithm!r} needs a TrainState with a critic "
                     "(create_rl_state)")
  if hp.kl_coef > 0 and not state.has_reference:
    raise ValueError(f"rl.kl_coef={hp.kl_coef} needs a TrainState with reference parameters")
  with jax.set_mesh(mesh):
    return _rl_update(state, batch, hp, mesh, hp.kl_coef if kl_coef is None else kl_coef)


def _epochs(state: TrainState, host: dict[str, np.ndarray], names: list[str], hp: RLHparams,
            mesh: Mesh, parts: tuple[str, ...]) -> tuple[TrainState, list[dict]]:
  """hp.epochs passes over shuffled minibatches of hp.mini_batch_rows rows, updating `parts`."""
  size = host["tokens"].shape[0]
  per_update = []
  for _ in range(hp.epochs):
    rng, key = _split_key(state.rng)
    state = state.replace(rng=rng)
    order = np.asarray(jax.random.permutation(key, size))
    for start in range(0, size, hp.mini_batch_rows):
      rows = order[start:start + hp.mini_batch_rows]
      minibatch = {k: host[k][rows] for k in names}
      if hp.length_bucket:
        state, metrics = _trimmed_update(state, minibatch, hp, mesh, parts)
      else:
        shape = f"{_shape(minibatch['tokens'])} in {hp.microbatches} microbatch(es)"
        with timing.compiling("rl update", shape):
          state, metrics = rl_step.minibatch_update(state, sharding.put_rows(minibatch, mesh),
                                                    hp, parts)
      per_update.append(metrics)
  return state, per_update


def _rl_update(state: TrainState, batch: Mapping[str, Any], hp: RLHparams, mesh: Mesh,
               kl_coef: float) -> tuple[TrainState, dict[str, float]]:
  host = _host_batch(batch, hp.mini_batch_rows)
  multihost.check_same(host, "the rollout batch")
  size = host["tokens"].shape[0]
  if hp.critic_apart and size % hp.critic_mini_batch_rows:
    raise ValueError(f"rollout batch of {size} rows is not a multiple of the critic's "
                     f"minibatch (rl.critic_mini_batch_size x rl.group_size = "
                     f"{hp.critic_mini_batch_rows} rows)")
  on_policy = single_on_policy_update(hp, size)
  scoring, training = timing.Stopwatch(), timing.Stopwatch()
  if not on_policy or state.has_reference:
    with scoring():
      host.update(_score_all(state, host, hp, mesh, old=not on_policy))
  prepare = hp.algo.advantages
  with timing.compiling(f"rl advantages ({hp.algorithm})", _shape(host["tokens"])):
    fields, prep_metrics = prepare(sharding.put_rows(host, mesh), hp, jnp.float32(kl_coef))
  host.update(multihost.fetch(fields))
  names = ["tokens", "positions", "attention_mask", "loss_mask", *fields,
           *minibatch_logprob_fields(hp, on_policy)]
  with training():
    state, per_update = _epochs(state, host, names, hp, mesh, rl_step.default_parts(hp))
    out = combine_metrics(multihost.fetch(per_update))
    if hp.critic_apart:
      state, per_critic = _epochs(state, host, names, hp.for_critic(), mesh, ("critic",))
      out.update(combine_metrics(multihost.fetch(per_critic), "critic_skipped",
                                 "critic_updates"))
  out.update({k: float(v) for k, v in multihost.fetch(prep_metrics).items()})
  out.update(scoring_seconds=scoring.seconds, scoring_compile_seconds=scoring.compile_seconds,
             train_seconds=training.seconds, train_compile_seconds=training.compile_seconds)
  return state, out
