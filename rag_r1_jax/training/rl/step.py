"""The jitted RL update steps: one optimizer update of GRPO or PPO on one minibatch.

Each step takes the TrainState (donated), a minibatch already sharded over the mesh's batch
axes, the static RLHparams and the static `parts` it updates ("actor", and "critic" for PPO);
it returns the new state and a dict of float32 scalars. Gradients are accumulated over
`hp.microbatches` inside the step, each microbatch weighed by its share of the minibatch's
loss aggregate (rl.microbatch_weighting), and a step whose loss or gradients are not finite
is skipped (`skipped` = 1, parameters and optimizer state kept).

Minibatch fields, all [rows, seq] unless noted (rl/trainer.py builds them):
  tokens, positions (int32), attention_mask, loss_mask (float32, 1 on generated tokens);
  old_logprobs: the policy's log-probs before this batch's updates (GRPO: absent when the
    batch is one update, trainer.single_on_policy_update; the minibatch's own detached
    log-probs are used, and sampler_logprobs gives the logprob_mismatch metric);
  sampler_logprobs: also present with rollout correction (rl.rollout_is);
  GRPO: advantages (group-normalised, broadcast over the mask), ref_logprobs (when kl_coef > 0);
  PPO: advantages (GAE, whitened), returns, old_values.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rag_r1_jax.rl import advantages as adv_lib
from rag_r1_jax.rl import losses
from rag_r1_jax.training import logprobs as logprobs_lib
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training import train_state as ts
from rag_r1_jax.training.train_state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RLHparams:
  """The static hyper-parameters of an RL update (from config.rl); hashable for jit."""
  algorithm: str
  clip_low: float
  clip_high: float
  kl_coef: float
  kl_estimator: str  # the loss's (GRPO)
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
  # learning_rate_schedule's arguments (train_state.rl_schedule) as sorted (name, value) pairs.
  actor_schedule: tuple
  critic_schedule: tuple
  logprob_chunk: int = 0
  length_bucket: int = 0  # > 0: microbatches cut to their own width (trainer.microbatch_plan)
  # The rollout's sampling temperature: every log-prob (policy, old, reference) and entropy is
  # taken under softmax(logits / temperature), the distribution that drew the tokens (veRL).
  temperature: float = 1.0
  kl_reward_estimator: str = "k3"  # the reward's (PPO)
  policy_loss: str = "vanilla"  # losses.POLICY_LOSSES
  clip_ratio_c: float = 0.0  # dual clip; 0: off
  microbatch_weighting: str = "global"  # losses.microbatch_weights
  rollout_is: str = ""  # "", "token" or "sequence" (losses.rollout_is_weights)
  rollout_is_threshold: float = 2.0
  # The critic's minibatches and epochs (PPO); equal to the actor's, one step updates both.
  critic_epochs: int = 1
  critic_mini_batch_rows: int = 0
  critic_microbatches: int = 1

  @classmethod
  def from_config(cls, config, batch_shards: int = 1) -> "RLHparams":
    """From config.rl (the schedules count optimizer updates, as create_rl_state's do).

    batch_shards: the mesh's data x fsdp, which rl.micro_batch_size_per_device multiplies.
    """
    rl = config.rl
    rows = rl.mini_batch_size * rl.group_size
    microbatches = opt_lib.microbatch_count(rows, rl.microbatches, rl.micro_batch_size_per_device,
                                            batch_shards, "rl")
    micro_rows = rows // microbatches  # the critic's microbatches are as large, at most
    critic_rows = (rl.critic_mini_batch_size or rl.mini_batch_size) * rl.group_size
    if not opt_lib.critic_rows_fit(critic_rows, micro_rows):
      raise ValueError(
          f"config.rl.critic_mini_batch_size={rl.critic_mini_batch_size} x rl.group_size = "
          f"{critic_rows} rows: not a multiple of the actor's {micro_rows}-row microbatches")
    schedule = lambda critic: tuple(sorted(ts.rl_schedule(rl, critic).items()))  # noqa: E731
    return cls(
        algorithm=rl.algorithm, clip_low=rl.clip_eps_low, clip_high=rl.clip_eps_high,
        kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
        loss_agg=rl.loss_agg, norm_length=rl.loss_norm_length or None,
        advantage=rl.advantage, gamma=rl.gamma, gae_lambda=rl.gae_lambda,
        whiten_advantages=rl.whiten_advantages, value_clip_eps=rl.value_clip_eps,
        group_size=rl.group_size, mini_batch_rows=rows, epochs=rl.epochs_per_batch,
        microbatches=microbatches, actor_schedule=schedule(False),
        critic_schedule=schedule(True), logprob_chunk=config.model.logprob_chunk,
        length_bucket=rl.length_bucket, temperature=rollout_temperature(config.sampling),
        kl_reward_estimator=rl.kl_reward_estimator, policy_loss=rl.policy_loss,
        clip_ratio_c=rl.clip_ratio_c, microbatch_weighting=rl.microbatch_weighting,
        rollout_is=rl.rollout_is, rollout_is_threshold=rl.rollout_is_threshold,
        critic_epochs=rl.critic_epochs or rl.epochs_per_batch,
        critic_mini_batch_rows=critic_rows,
        critic_microbatches=max(critic_rows // micro_rows, 1))

  def lr(self, step: jax.Array, critic: bool = False) -> jax.Array:
    """The learning rate the optimizer applies at update `step`."""
    kwargs = dict(self.critic_schedule if critic else self.actor_schedule)
    return opt_lib.learning_rate_schedule(**kwargs)(step)

  @property
  def algo(self) -> "Algorithm":
    """The algorithm's parts (ALGORITHMS[algorithm])."""
    return ALGORITHMS[self.algorithm]

  @property
  def critic_apart(self) -> bool:
    """Whether the critic trains in its own epochs / minibatches (PPO with its own settings)."""
    return self.algo.critic and (self.critic_epochs, self.critic_mini_batch_rows) != (
        self.epochs, self.mini_batch_rows)

  def for_critic(self) -> "RLHparams":
    """These hparams with the critic's epochs, minibatch rows and microbatches."""
    return dataclasses.replace(self, epochs=self.critic_epochs,
                               mini_batch_rows=self.critic_mini_batch_rows,
                               microbatches=self.critic_microbatches)


def rollout_temperature(sampling_config) -> float:
  """The temperature RL rollouts sample at (config.sampling): 1 when they decode greedily."""
  return 1.0 if sampling_config.greedy else float(sampling_config.temperature)


def default_parts(hp: RLHparams) -> tuple[str, ...]:
  """The models one update step trains: the actor, and the critic unless it trains apart."""
  if hp.algo.critic and not hp.critic_apart:
    return ("actor", "critic")
  return ("actor",)


def _logprobs(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
              hp: RLHparams) -> tuple[jax.Array, jax.Array]:
  """Token log-probs and entropies [rows, seq]; no backward through the entropy if unused."""
  logp, entropy = logprobs_lib.token_logprobs(nnx.merge(graphdef, params), mb, hp.logprob_chunk,
                                              hp.temperature)
  return logp, entropy if hp.entropy_coef else jax.lax.stop_gradient(entropy)


def _policy_kwargs(old: jax.Array, mb: Batch, hp: RLHparams) -> tuple[dict, Metrics]:
  """The policy term's settings, with rollout-correction weights when rl.rollout_is is set."""
  kwargs = dict(clip_low=hp.clip_low, clip_high=hp.clip_high, agg=hp.loss_agg,
                norm_length=hp.norm_length, clip_ratio_c=hp.clip_ratio_c,
                policy_loss_mode=hp.policy_loss)
  if not hp.rollout_is:
    return kwargs, {}
  weights, metrics = losses.rollout_is_weights(old, mb["sampler_logprobs"], mb["loss_mask"],
                                               hp.rollout_is, hp.rollout_is_threshold)
  return dict(kwargs, is_weights=weights), metrics


def grpo_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                        hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The GRPO loss of one (micro)batch: clipped ratio, KL to the reference, entropy bonus.

  All terms are aggregated over generated tokens only (retrieved tokens are masked out).
  """
  logp, entropy = _logprobs(params, mb, graphdef, hp)
  # Without a reference (kl_coef == 0) the KL term is exactly 0 and no ref pass is needed.
  ref = mb["ref_logprobs"] if hp.kl_coef > 0 else jax.lax.stop_gradient(logp)
  old = mb["old_logprobs"] if "old_logprobs" in mb else jax.lax.stop_gradient(logp)
  kwargs, is_metrics = _policy_kwargs(old, mb, hp)
  loss, metrics = losses.grpo_loss(
      logp, old, ref, mb["advantages"], mb["loss_mask"], kl_coef=hp.kl_coef,
      kl_estimator=hp.kl_estimator, entropy=entropy, entropy_coef=hp.entropy_coef, **kwargs)
  metrics.update(is_metrics)
  if "old_logprobs" not in mb:
    metrics["logprob_mismatch"] = losses.aggregate(jnp.abs(old - mb["sampler_logprobs"]),
                                                   mb["loss_mask"], "token_mean")
  return loss, metrics


def ppo_actor_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                             hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The PPO actor loss of one (micro)batch (the KL to the reference is in the rewards)."""
  logp, entropy = _logprobs(params, mb, graphdef, hp)
  kwargs, is_metrics = _policy_kwargs(mb["old_logprobs"], mb, hp)
  loss, metrics = losses.ppo_actor_loss(
      logp, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], entropy=entropy,
      entropy_coef=hp.entropy_coef, **kwargs)
  metrics.update(is_metrics)
  return loss, metrics


def critic_minibatch_loss(params: nnx.State, mb: Batch, graphdef: nnx.GraphDef,
                          hp: RLHparams) -> tuple[jax.Array, Metrics]:
  """The clipped value loss of one (micro)batch."""
  values = nnx.merge(graphdef, params)(mb)
  return losses.value_loss(values, mb["old_values"], mb["returns"], mb["loss_mask"],
                           hp.value_clip_eps, hp.loss_agg, hp.norm_length)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  return losses.aggregate(x, mask, "token_mean")


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over masked tokens (1: perfect, <= 0: useless)."""
  var = lambda x: _masked_mean((x - _masked_mean(x, mask)) ** 2, mask)  # noqa: E731
  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


@functools.partial(jax.jit, static_argnames="hp")
def grpo_advantages(b: dict[str, jax.Array], hp: RLHparams,
                    kl_coef: jax.Array) -> tuple[dict, dict]:
  """Group-normalised token advantages [B, T] and the sampler-mismatch metric."""
  del kl_coef  # GRPO's KL is in the loss, with hp.kl_coef
  mask = b["loss_mask"]
  adv = adv_lib.grpo_advantages(b["rewards"], mask, group_ids=b["group_ids"], mode=hp.advantage)
  metrics = {}
  if "old_logprobs" in b:  # else the update reports the mismatch (single_on_policy_update)
    metrics["logprob_mismatch"] = _masked_mean(jnp.abs(b["old_logprobs"] -
                                                       b["sampler_logprobs"]), mask)
  if "ref_logprobs" in b and "old_logprobs" in b:  # on-policy, the loss's `kl` is the same
    metrics["kl_ref"] = _masked_mean(
        losses.kl_penalty(b["old_logprobs"], b["ref_logprobs"], hp.kl_estimator), mask)
  return {"advantages": adv}, metrics


@functools.partial(jax.jit, static_argnames="hp")
def ppo_advantages(b: dict[str, jax.Array], hp: RLHparams,
                   kl_coef: jax.Array) -> tuple[dict, dict]:
  """GAE advantages (whitened) and returns [B, T], the reward carrying kl_coef x the KL
  penalty (rl.kl_reward_estimator; kl_coef: a scalar, the controller's coefficient).

  Metrics: kl_ref (mean over tokens) and kl_ref_seq_mean (mean over sequences of each one's
  token mean: the statistic the adaptive controller reads, rl/kl_control.py), kl_coef.
  """
  mask = b["loss_mask"]
  token_reward = adv_lib.token_rewards(b["rewards"], mask)
  metrics = {"logprob_mismatch": _masked_mean(jnp.abs(b["old_logprobs"] -
                                                      b["sampler_logprobs"]), mask)}
  if hp.kl_coef > 0:
    token_reward = adv_lib.kl_penalized_rewards(token_reward, b["old_logprobs"],
                                                b["ref_logprobs"], mask, kl_coef,
                                                hp.kl_reward_estimator)
    kl = losses.kl_penalty(b["old_logprobs"], b["ref_logprobs"], hp.kl_reward_estimator)
    metrics["kl_ref"] = _masked_mean(kl, mask)
    metrics["kl_ref_seq_mean"] = losses.aggregate(kl, mask, "seq_mean_token_mean")
    metrics["kl_coef"] = jnp.asarray(kl_coef, jnp.float32)
  adv, returns = adv_lib.gae(token_reward, b["values"], mask, hp.gamma, hp.gae_lambda)
  if hp.whiten_advantages:
    adv = adv_lib.whiten(adv, mask)
  metrics["explained_variance"] = explained_variance(b["values"], returns, mask)
  metrics["return_mean"] = _masked_mean(returns, mask)
  return {"advantages": adv, "returns": returns, "old_values": b["values"]}, metrics

@dataclasses.dataclass(frozen=True)
class Algorithm:
  """What an RL algorithm changes in the update; rl.algorithm names one of ALGORITHMS."""
  actor_loss: Callable  # (params, minibatch, graphdef, hp) -> (loss, metrics)
  advantages: Callable  # jitted (rollout batch, hp, kl_coef) -> (minibatch fields, metrics)
  critic: bool  # trains a value model beside the policy (its values give the advantages)
  kl_in_loss: bool  # the reference KL is a loss term (else a penalty in the rewards)
  # One epoch of one minibatch takes the update's own detached log-probs as the old ones.
  one_pass_on_policy: bool
  value_fields: tuple[str, ...] = ()  # minibatch fields the critic's loss reads


ALGORITHMS = {
    "grpo": Algorithm(grpo_minibatch_loss, grpo_advantages, critic=False, kl_in_loss=True,
                      one_pass_on_policy=True),
    "ppo": Algorithm(ppo_actor_minibatch_loss, ppo_advantages, critic=True, kl_in_loss=False,
                     one_pass_on_policy=False, value_fields=("returns", "old_values")),
}


def _loss_fn(state: TrainState, hp: RLHparams, part: str):
  """The loss `part` ("actor" or "critic") differentiates, bound to its graphdef and hp."""
  if part == "critic":
    return functools.partial(critic_minibatch_loss, graphdef=state.critic.graphdef, hp=hp)
  return state.bind_frozen(functools.partial(hp.algo.actor_loss, graphdef=state.graphdef,
                                             hp=hp))


def _params(state: TrainState, part: str) -> nnx.State:
  return state.critic.params if part == "critic" else state.params


def _gradients(state: TrainState, mb: Batch, hp: RLHparams, microbatches: int,
               parts: tuple[str, ...]) -> dict:
  """{part: (loss, metrics, grads)}, the microbatches combined by their aggregate shares."""
  weights = None
  if microbatches > 1:
    masks = opt_lib.split_microbatches(mb["loss_mask"], microbatches)
    weights = losses.microbatch_weights([masks[i] for i in range(microbatches)], hp.loss_agg,
                                        hp.microbatch_weighting)
  return {part: opt_lib.accumulate_gradients(_loss_fn(state, hp, part), _params(state, part),
                                             mb, microbatches, weights, losses.LOSS_METRICS)
          for part in parts}


def _step(tx: optax.GradientTransformation, params, opt_state, loss, metrics, grads):
  """One guarded optimizer update: (params, opt_state, finite, metrics)."""
  grad_norm = optax.global_norm(grads)
  params, opt_state, finite = opt_lib.nonfinite_guard(tx, grads, opt_state, params, loss)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
  return params, opt_state, finite, metrics


def _apply_gradients(state: TrainState, grads: dict, hp: RLHparams) -> tuple[TrainState, Metrics]:
  """The optimizer update of each part in `_gradients`' output, each guarded alone."""
  metrics = {}
  if "actor" in grads:
    params, opt_state, finite, metrics = _step(state.tx, state.params, state.opt_state,
                                               *grads["actor"])
    metrics.update(learning_rate=hp.lr(state.step), skipped=1.0 - finite.astype(jnp.float32))
    state = state.replace(params=params, opt_state=opt_state,
                          step=state.step + finite.astype(jnp.int32))
  if "critic" in grads:
    critic = state.critic
    count = opt_lib.update_count(critic.opt_state)
    c_params, c_opt_state, c_finite, c_metrics = _step(critic.tx, critic.params,
                                                       critic.opt_state, *grads["critic"])
    metrics.update({k: v for k, v in c_metrics.items() if k.startswith(("vf_", "value_"))})
    metrics.update(critic_grad_norm=c_metrics["grad_norm"],
                   critic_learning_rate=hp.lr(count, critic=True),
                   critic_skipped=1.0 - c_finite.astype(jnp.float32))
    state = state.replace(critic=critic.replace(params=c_params, opt_state=c_opt_state))
  return state, metrics


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("hp", "parts"))
def minibatch_update(state: TrainState, mb: Batch, hp: RLHparams,
                     parts: Optional[tuple[str, ...]] = None) -> tuple[TrainState, Metrics]:
  """One optimizer update on minibatch `mb` (see the module docstring): GRPO's, or PPO's of the
  actor and of the critic (each guarded alone), as hp.algorithm says; `parts` (default:
  `default_parts`) names the models updated."""
  parts = parts or default_parts(hp)
  return _apply_gradients(state, _gradients(state, mb, hp, hp.microbatches, parts), hp)




@functools.partial(jax.jit, static_argnames=("hp", "parts"))
def weighted_gradients(state: TrainState, mb: Batch, hp: RLHparams, weight: jax.Array,
                       metric_weight: Optional[jax.Array] = None,
                       parts: Optional[tuple[str, ...]] = None) -> dict:
  """`_gradients` of one microbatch (no inner split): loss, grads and losses.LOSS_METRICS times
  `weight`, the other metrics times `metric_weight` (default `weight`; "*_max" unscaled).

  The host-side microbatch loop (trainer.py) combines these over microbatches of different
  widths (each compiles once per width, `add_gradients`) and passes the sum to
  `apply_gradients`.
  """
  metric_weight = weight if metric_weight is None else metric_weight
  out = {}
  for part, (loss, metrics, grads) in _gradients(state, mb, hp, 1,
                                                 parts or default_parts(hp)).items():
    scale = lambda k: weight if k in losses.LOSS_METRICS else metric_weight  # noqa: E731
    metrics = {k: v if k.endswith("_max") else v.astype(jnp.float32) * scale(k)
               for k, v in metrics.items()}
    out[part] = (loss.astype(jnp.float32) * weight, metrics,
                 jax.tree.map(lambda g: g.astype(jnp.float32) * weight, grads))
  return out


@functools.partial(jax.jit, donate_argnums=0)
def add_gradients(total: dict, part: dict) -> dict:
  """Two `weighted_gradients` outputs combined: sums, and maxima of the "*_max" metrics."""
  out = {}
  for name, (loss, metrics, grads) in total.items():
    p_loss, p_metrics, p_grads = part[name]
    metrics = {k: jnp.maximum(v, p_metrics[k]) if k.endswith("_max") else v + p_metrics[k]
               for k, v in metrics.items()}
    out[name] = (loss + p_loss, metrics, jax.tree.map(jnp.add, grads, p_grads))
  return out


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
    out["old_logprobs"] = logprobs_lib.token_logprobs(state.model(), mb, hp.logprob_chunk,
                                                      hp.temperature)[0]
  if state.has_reference:
    out["ref_logprobs"] = logprobs_lib.token_logprobs(state.reference(), mb, hp.logprob_chunk,
                                                      hp.temperature)[0]
  if state.critic is not None:
    out["values"] = nnx.merge(state.critic.graphdef, state.critic.params)(mb)
  mask = mb["loss_mask"].astype(jnp.float32)
  return {k: v * mask for k, v in out.items()}
