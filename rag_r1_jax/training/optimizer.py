"""Optimizer: AdamW with warmup, global-norm clipping, float32 state, in-jit gradient accumulation.

Gradient accumulation happens inside the jitted update step (`accumulate_gradients`, a
`lax.scan` over microbatches), not with optax.MultiSteps: one optimizer update per call keeps
the step count, the schedule and the non-finite guard aligned with training steps.

Float32 optimizer state: optax's Adam creates its moments with the params' dtype, so
`make_optimizer` wraps the chain in `with_float32_state`, which hands the inner transform
float32 params and gradients (its moments are therefore float32) and casts the updates back to
each param's dtype. Keep params themselves in float32 (model.param_dtype) with bfloat16
compute (model.dtype): with bfloat16 params an update of lr=1e-6 rounds away to nothing.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine")
PyTree = Any


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_ratio: float,
                           schedule: str = "constant", *, warmup_steps: int = -1,
                           min_lr_ratio: float = 0.0) -> optax.Schedule:
  """lr(step): linear warmup to learning_rate, then constant or cosine decay to
  min_lr_ratio x learning_rate at total_steps.

  The warmup lasts warmup_steps updates, or int(warmup_ratio * total_steps) when warmup_steps
  is negative (veRL's lr_warmup_steps / lr_warmup_steps_ratio); update k (0-based) uses
  learning_rate * (k + 1) / warmup_steps during warmup, so the first update is not wasted
  (veRL's first update uses 0). The cosine is lr x (min + (1 - min) (1 + cos(pi p)) / 2),
  p the progress after warmup (veRL's min_lr_ratio); the constant schedule ignores min.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r} (rl.schedule) must be one of {SCHEDULES}")
  if total_steps < 1:
    raise ValueError(f"total_steps={total_steps} (rl.steps) must be >= 1")
  if not 0.0 <= warmup_ratio < 1.0:
    raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
  if not 0.0 <= min_lr_ratio <= 1.0:
    raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")
  if warmup_steps < 0:
    warmup_steps = int(warmup_ratio * total_steps)

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum((step + 1.0) / max(warmup_steps, 1), 1.0)
    if schedule == "constant":
      decay = 1.0
    else:
      progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
      decay = min_lr_ratio + (1.0 - min_lr_ratio) * cosine if min_lr_ratio else cosine
    return learning_rate * jnp.where(step < warmup_steps, warm, decay)

  return lr


def with_float32_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on float32 copies of grads and params; updates come back in each param's dtype."""

  def to_f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)

  def init(params):
    return inner.init(to_f32(params))

  def update(updates, state, params=None):
    new_updates, state = inner.update(to_f32(updates), state,
                                      None if params is None else to_f32(params))
    reference = updates if params is None else params
    new_updates = jax.tree.map(lambda u, p: u.astype(p.dtype), new_updates, reference)
    return new_updates, state

  return optax.GradientTransformation(init, update)


def make_optimizer(learning_rate: float, total_steps: int, warmup_ratio: float,
                   schedule: str = "constant", max_grad_norm: float = 1.0,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, *, warmup_steps: int = -1,
                   min_lr_ratio: float = 0.0) -> optax.GradientTransformation:
  """AdamW with a warmup schedule, preceded by global-norm clipping (skipped if max_grad_norm <= 0).

  The schedule is learning_rate_schedule's. The state is float32 whatever the params' dtype
  (see the module docstring).
  """
  lr = learning_rate_schedule(learning_rate, total_steps, warmup_ratio, schedule,
                              warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
  parts = []
  if max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(max_grad_norm))
  parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return with_float32_state(optax.chain(*parts))


def update_count(opt_state: PyTree) -> jax.Array:
  """The number of updates `make_optimizer`'s state has applied (its schedule's step)."""
  states = jax.tree.leaves(opt_state,
                           is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
  return next(s.count for s in states if isinstance(s, optax.ScaleByScheduleState))


def microbatch_count(rows: int, microbatches: int, per_device: int, batch_shards: int,
                     section: str) -> int:
  """How many microbatches split `rows`: `microbatches`, or, with `per_device` > 0, as many as
  make microbatches of `per_device` rows on each of `batch_shards` devices (config.<section>)."""
  if per_device > 0:
    per_step = per_device * batch_shards
    if rows % per_step:
      raise ValueError(
          f"config.{section}.micro_batch_size_per_device={per_device} x {batch_shards} batch "
          f"shards (mesh data x fsdp) = {per_step} rows must divide the {rows} rows of an update")
    return rows // per_step
  if rows % microbatches:
    raise ValueError(f"config.{section}.microbatches={microbatches} must divide the {rows} rows "
                     "of an update")
  return microbatches


def critic_rows_fit(critic_rows: int, actor_micro_rows: int) -> bool:
  """Whether a critic minibatch of `critic_rows` runs in the actor's microbatches: it fits in
  one, or is a whole number of them."""
  return critic_rows <= actor_micro_rows or critic_rows % actor_micro_rows == 0


def split_microbatches(batch: PyTree, num_microbatches: int) -> PyTree:
  """Every leaf [batch, ...] reshaped to [num_microbatches, batch // num_microbatches, ...].

  Under a mesh (`jax.set_mesh`) each microbatch's rows are constrained to the batch axes, so
  every device holds its share of every microbatch (the reshape alone would leave whole
  microbatches on some devices).
  """
  from rag_r1_jax import sharding  # local import: sharding is a leaf module

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by rl.microbatches="
                       f"{num_microbatches}")
    y = x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
    return sharding.constrain(y, (None, "act_batch") + (None,) * (x.ndim - 1))

  return jax.tree.map(split, batch)


def combine_aux(aux: dict, loss_weights: jax.Array, aux_weights: jax.Array,
                loss_like: tuple[str, ...] = ()) -> dict:
  """Per-microbatch scalars {name: [M]} combined: "*_max" by their maximum, names in
  `loss_like` weighted like the loss, the rest by `aux_weights` ([M] each)."""
  def combine(name, values):
    if name.endswith("_max"):
      return values.max(axis=0)
    weights = loss_weights if name in loss_like else aux_weights
    return jnp.tensordot(weights, values.astype(jnp.float32), axes=1)
  return {k: combine(k, v) for k, v in aux.items()}


def accumulate_gradients(loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]],
                         params: PyTree, batch: PyTree, num_microbatches: int,
                         weights: Optional[tuple[jax.Array, jax.Array]] = None,
                         loss_like: tuple[str, ...] = ()) -> tuple[jax.Array, PyTree, PyTree]:
  """(loss, aux, grads) of loss_fn combined over microbatches of the leading batch axis.

  loss_fn(params, microbatch) -> (scalar loss, aux dict of scalars). A `lax.scan` runs the
  microbatches one after another, so activation memory is that of one microbatch. weights:
  (loss weights [M], aux weights [M]) (losses.microbatch_weights): the loss and grads are
  sum_i w_i x microbatch i's, the aux entries combined as `combine_aux` says. None weighs
  every microbatch 1 / M. Grads are accumulated and returned in float32. With
  num_microbatches == 1 it is exactly value_and_grad on the whole batch.
  """
  from rag_r1_jax.models import params as params_lib  # local import: models import training

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  f32 = lambda tree: params_lib.constrain_like(  # noqa: E731
      jax.tree.map(lambda g: g.astype(jnp.float32), tree), params)
  if num_microbatches == 1:
    (loss, aux), grads = grad_fn(params, batch)
    return loss, aux, f32(grads)
  micro = split_microbatches(batch, num_microbatches)
  loss_weights = jnp.ones((num_microbatches,)) if weights is None else weights[0]

  def body(acc, xs):
    mb, weight = xs
    (loss, aux), grads = grad_fn(params, mb)
    if weights is not None:
      loss, grads = loss * weight, jax.tree.map(lambda g: g * weight, grads)
    return jax.tree.map(jnp.add, acc, (loss.astype(jnp.float32), f32(grads))), aux

  zeros = (jnp.zeros((), jnp.float32),
           f32(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)))
  (loss, grads), aux_stack = jax.lax.scan(body, zeros, (micro, loss_weights))
  if weights is None:
    scale = 1.0 / num_microbatches
    return (loss * scale, jax.tree.map(lambda a: jnp.mean(a, axis=0), aux_stack),
            jax.tree.map(lambda g: g * scale, grads))
  return loss, combine_aux(aux_stack, *weights, loss_like), grads


def all_finite(loss: jax.Array, grads: PyTree) -> jax.Array:
  """Scalar bool: the loss and every gradient entry are finite."""
  ok = jnp.all(jnp.isfinite(loss))
  for g in jax.tree.leaves(grads):
    ok = ok & jnp.all(jnp.isfinite(g))
  return ok


def nonfinite_guard(tx: optax.GradientTransformation, grads: PyTree, opt_state: PyTree,
                    params: PyTree, loss: jax.Array) -> tuple[PyTree, PyTree, jax.Array]:
  """One optimizer step, skipped if loss or any grad is non-finite: (params, state, finite).

  When not finite, params and opt_state come back unchanged (the step counter too, so the
  schedule does not advance). Jittable; the host counts consecutive skips (NonfiniteStreak).
  """
  finite = all_finite(loss, grads)
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_state = tx.update(safe_grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  new_params = jax.tree.map(keep, new_params, params)
  new_state = jax.tree.map(keep, new_state, opt_state)
  return (*constrain_like_params(new_params, new_state, params), finite)


def constrain_like_params(new_params: PyTree, opt_state: PyTree,
                          params: PyTree) -> tuple[PyTree, PyTree]:
  """New parameters and every params-shaped part of the optimizer state (moments) constrained
  to the parameters' shardings under the current mesh, so that a step's outputs come back laid
  out as its inputs were and the next call does not compile again (XLA chose other layouts for
  the norm weights, a second compilation of each update step)."""
  from rag_r1_jax.models import params as params_lib  # local import: models import training

  param_def = jax.tree.structure(params)

  def like_params(x):
    try:
      return jax.tree.structure(x) == param_def
    except TypeError:
      return False

  pin = lambda tree: params_lib.constrain_like(tree, params)  # noqa: E731
  opt_state = jax.tree.map(lambda x: pin(x) if like_params(x) else x, opt_state,
                           is_leaf=like_params)
  return pin(new_params), opt_state


class NonfiniteStreak(NamedTuple):
  """Host-side count of consecutive skipped steps; `update` raises after `limit` in a row.

  field: the config field `limit` came from (named in the error)."""
  limit: int
  field: str
  count: int = 0

  def update(self, finite: bool, step: int) -> "NonfiniteStreak":
    """The next streak; raises FloatingPointError after `limit` skips in a row."""
    count = 0 if finite else self.count + 1
    if count and count >= self.limit:
      raise FloatingPointError(
          f"step {step}: loss or gradients non-finite for {count} consecutive steps "
          f"({self.field}={self.limit}); halting. Lower the learning rate or "
          "restore an earlier checkpoint.")
    return self._replace(count=count)
