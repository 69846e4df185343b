"""The jitted RL update steps: one optimizer update of GRPO or PPO on one minibatch.

Each step takes the TrainState (donated), a minibatch already sharded over the mesh's batch
axes, and the static RLHparams; it returns the new state and a dict of float32 scalars.
Gradients are accumulated over `hp.microbatches` inside the step, and a step whose loss or
gradients are not finite is skipped (`skipped` = 1, parameters and optimizer state kept).

Minibatch fields, all [rows, seq] unless noted (rl_update.py builds them):
  tokens, positions (int32), attention_mask, loss_mask (float32, 1 on generated tokens);
  old_logprobs: the policy's log-probs before this batch's updates (GRPO: absent when the
    batch is one update, rl_update.single_on_policy_update; the minibatch's own detached
    log-probs are used, and sampler_logprobs gives the logprob_mismatch metric);
  GRPO: advantages (group-normalised, broadcast over the mask), ref_logprobs (when kl_coef > 0);
  PPO: advantages (GAE, whitened), returns, old_values.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rag_r1_jax.rl import losses
from rag_r1_jax.training import logprobs as logprobs_lib
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training.train_state import TrainState, rl_updates_per_step

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RLHparams:
  """The static hyper-parameters of an RL update (from config.rl); hashable for jit."""
  algorithm: str
  clip_low: float
  clip_high: float
  kl_coef: float
  kl_estimator: str
  entropy_coef: float
  loss_agg: str
  norm_length: Optional[int]
  advantage: str
  gamma: float
  gae_lambda: float
  whiten_advantages: bool
  value_clip_eps: float
  group_size: int
  mini_batch_rows: int  # rl.mini_batch_size questions x rl.group_size samples
  epochs: int
  microbatches: int
  learning_rate: float
  critic_learning_rate: float
  total_updates: int
  warmup_ratio: float
  schedule: str
  logprob_chunk: int = 0
  length_bucket: int = 0  # > 0: microbatches cut to their own width (rl_update.microbatch_plan)

  @classmethod
  def from_config(cls, config, batch_shards: int = 1) -> "RLHparams":
    """From config.rl (the schedule counts optimizer updates, as create_rl_state's does).

    batch_shards: the mesh's data x fsdp, which rl.micro_batch_size_per_device multiplies.
    """
    rl = config.rl
    rows = rl.mini_batch_size * rl.group_size
    microbatches = opt_lib.microbatch_count(rows, rl.microbatches, rl.micro_batch_size_per_device,
                                            batch_shards, "rl")
    return cls(
        algorithm=rl.algorithm, clip_low=rl.clip_eps_low, clip_high=rl.clip_eps_high,
        kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
        loss_agg=rl.loss_agg, norm_length=rl.loss_norm_length or None,
        advantage=rl.advantage, gamma=rl.gamma, gae_lambda=rl.gae_lambda,
        whiten_advantages=rl.whiten_advantages, value_clip_eps=rl.value_clip_eps,
        group_size=rl.group_size, mini_batch_rows=rows, epochs=rl.epochs_per_batch,
        microbatches=microbatches, learning_rate=rl.learning_rate,
        critic_learning_rate=rl.critic_learning_rate,
        total_updates=rl.steps * rl_updates_per_step(rl), warmup_ratio=rl.warmup_ratio,
        schedule=rl.schedule, logprob_chunk=config.model.logprob_chunk,
        length_bucket=rl.length_bucket)

  def lr(self, step: jax.Array, critic: bool = False) -> jax.Array:
    """The learning rate the optimizer applies at update `step`."""
    peak = self.critic_learning_rate if critic else self.learning_rate
    return opt_lib.learning_rate_schedule(peak, self.total_updates, self.warmup_ratio,
                                          self.schedule)(step)


def _logprobs(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
              hp: RLHparams) -> tuple[jax.Array, jax.Array]:
  """Token log-probs and entropies [rows, seq]; no backward through the entropy if unused."""
  logp, entropy = logprobs_lib.token_logprobs(nnx.merge(graphdef, params), mb, hp.logprob_chunk)
  return logp, entropy if hp.entropy_coef else jax.lax.stop_gradient(entropy)


def grpo_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                        hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The GRPO loss of one (micro)batch: clipped ratio, KL to the reference, entropy bonus.

  All terms are aggregated over generated tokens only (retrieved tokens are masked out).
  """
  logp, entropy = _logprobs(params, mb, graphdef, hp)
  # Without a reference (kl_coef == 0) the KL term is exactly 0 and no ref pass is needed.
  ref = mb["ref_logprobs"] if hp.kl_coef > 0 else jax.lax.stop_gradient(logp)
  old = mb["old_logprobs"] if "old_logprobs" in mb else jax.lax.stop_gradient(logp)
  loss, metrics = losses.grpo_loss(
      logp, old, ref, mb["advantages"], mb["loss_mask"],
      clip_low=hp.clip_low, clip_high=hp.clip_high, kl_coef=hp.kl_coef,
      kl_estimator=hp.kl_estimator, entropy=entropy, entropy_coef=hp.entropy_coef,
      agg=hp.loss_agg, norm_length=hp.norm_length)
  if "old_logprobs" not in mb:
    metrics["logprob_mismatch"] = losses.aggregate(jnp.abs(old - mb["sampler_logprobs"]),
                                                   mb["loss_mask"], "token_mean")
  return loss, metrics


def ppo_actor_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                             hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The PPO actor loss of one (micro)batch (the KL to the reference is in the rewards)."""
  logp, entropy = _logprobs(params, mb, graphdef, hp)
  return losses.ppo_actor_loss(
      logp, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], clip_low=hp.clip_low,
      clip_high=hp.clip_high, entropy=entropy, entropy_coef=hp.entropy_coef, agg=hp.loss_agg,
      norm_length=hp.norm_length)


def critic_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                          hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The clipped value loss of one (micro)batch."""
  values = nnx.merge(graphdef, params)(mb)
  return losses.value_loss(values, mb["old_values"], mb["returns"], mb["loss_mask"],
                           hp.value_clip_eps, hp.loss_agg, hp.norm_length)


def _loss_fns(state: TrainState, hp: RLHparams) -> dict:
  """The losses an update differentiates: {"actor": fn} (GRPO), plus "critic" (PPO)."""
  actor = ppo_actor_minibatch_loss if hp.algorithm == "ppo" else grpo_minibatch_loss
  fns = {"actor": functools.partial(actor, graphdef=state.graphdef, hp=hp)}
  if hp.algorithm == "ppo":
    fns["critic"] = functools.partial(critic_minibatch_loss, graphdef=state.critic.graphdef,
                                      hp=hp)
  return fns


def _gradients(state: TrainState, mb: Batch, hp: RLHparams, microbatches: int) -> dict:
  """{"actor": (loss, metrics, grads)} (and "critic" for PPO), averaged over microbatches."""
  params = {"actor": state.params}
  if hp.algorithm == "ppo":
    params["critic"] = state.critic.params
  return {name: opt_lib.accumulate_gradients(fn, params[name], mb, microbatches)
          for name, fn in _loss_fns(state, hp).items()}


def _step(tx: optax.GradientTransformation, params, opt_state, loss, metrics, grads):
  """One guarded optimizer update: (params, opt_state, finite, metrics)."""
  grad_norm = optax.global_norm(grads)
  params, opt_state, finite = opt_lib.nonfinite_guard(tx, grads, opt_state, params, loss)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
  return params, opt_state, finite, metrics


def _apply_gradients(state: TrainState, grads: dict, hp: RLHparams) -> tuple[TrainState, Metrics]:
  """The optimizer update(s) of `_gradients`' output, each guarded alone."""
  params, opt_state, finite, metrics = _step(state.tx, state.params, state.opt_state,
                                             *grads["actor"])
  metrics.update(learning_rate=hp.lr(state.step), skipped=1.0 - finite.astype(jnp.float32))
  if hp.algorithm == "ppo":
    critic = state.critic
    c_params, c_opt_state, c_finite, c_metrics = _step(critic.tx, critic.params,
                                                       critic.opt_state, *grads["critic"])
    metrics.update({k: v for k, v in c_metrics.items() if k.startswith(("vf_", "value_"))})
    metrics.update(critic_grad_norm=c_metrics["grad_norm"],
                   critic_learning_rate=hp.lr(state.step, critic=True),
                   critic_skipped=1.0 - c_finite.astype(jnp.float32))
    state = state.replace(critic=critic.replace(params=c_params, opt_state=c_opt_state))
  state = state.replace(params=params, opt_state=opt_state,
                        step=state.step + finite.astype(jnp.int32))
  return state, metrics


@functools.partial(jax.jit, donate_argnums=0, static_argnames="hp")
def minibatch_update(state: TrainState, mb: Batch, hp: RLHparams) -> tuple[TrainState, Metrics]:
  """One optimizer update on minibatch `mb` (see the module docstring): GRPO's, or PPO's of the
  actor and of the critic (each guarded alone), as hp.algorithm says."""
  return _apply_gradients(state, _gradients(state, mb, hp, hp.microbatches), hp)


grpo_update = ppo_update = minibatch_update  # the names callers know; hp picks the algorithm


@functools.partial(jax.jit, static_argnames="hp")
def weighted_gradients(state: TrainState, mb: Batch, hp: RLHparams, weight: jax.Array) -> dict:
  """`_gradients` of one microbatch (no inner split), loss, metrics and grads times `weight`.

  The host-side microbatch loop of rl_update sums these over microbatches of different widths
  (each compiles once per width) and passes the sum to `apply_gradients`.
  """
  scale = lambda x: x.astype(jnp.float32) * weight  # noqa: E731
  return jax.tree.map(scale, _gradients(state, mb, hp, 1))


@functools.partial(jax.jit, donate_argnums=0)
def add_gradients(total: dict, part: dict) -> dict:
  return jax.tree.map(jnp.add, total, part)


@functools.partial(jax.jit, donate_argnums=0, static_argnames="hp")
def apply_gradients(state: TrainState, grads: dict, hp: RLHparams) -> tuple[TrainState, Metrics]:
  """The update of summed `weighted_gradients`: the same step as `minibatch_update`."""
  return _apply_gradients(state, grads, hp)


@functools.partial(jax.jit, static_argnames=("hp", "old"))
def score(state: TrainState, mb: Batch, hp: RLHparams, old: bool = True) -> Batch:
  """Forward passes before the updates: old_logprobs (unless `old` is False), ref_logprobs
  (if there is a reference), values (PPO)."""
  out = {}
  if old:
    out["old_logprobs"] = logprobs_lib.token_logprobs(state.model(), mb, hp.logprob_chunk)[0]
  if state.ref_params is not None:
    out["ref_logprobs"] = logprobs_lib.token_logprobs(state.reference(), mb,
                                                      hp.logprob_chunk)[0]
  if state.critic is not None:
    out["values"] = nnx.merge(state.critic.graphdef, state.critic.params)(mb)
  mask = mb["loss_mask"].astype(jnp.float32)
  return {k: v * mask for k, v in out.items()}
