"""GRPO and PPO losses: pure, jittable functions over masked token arrays.

Shapes: logprobs, old_logprobs, ref_logprobs, advantages, values, returns: [batch, seq] float;
loss_mask: [batch, seq] (1 on generated tokens; 0 on prompt, retrieved <information> tokens
and padding); logits: [batch, seq, vocab]. `logprobs[b, t]` is the log-prob of token t.
Every loss returns (scalar float32, metrics dict of scalar float32).
"""

from typing import Optional

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")
# exp() of a log-ratio beyond this overflows float32 long before it means anything.
_MAX_LOG_RATIO = 20.0

Metrics = dict[str, jax.Array]


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token estimate [batch, seq] of KL(policy || reference) from policy samples.

  k1 = logp - ref (unbiased, high variance, can be negative); k2 = (logp - ref)^2 / 2;
  k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, non-negative, low variance: the one
  Search-R1's GRPO uses). The log-ratio is clipped to +-20 so that k3 stays finite.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"rl.kl_estimator={estimator!r} must be one of {KL_ESTIMATORS}")
  diff = logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32)
  if estimator == "k1":
    return diff
  if estimator == "k2":
    return 0.5 * diff ** 2
  log_ratio = jnp.clip(-diff, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # ref - logp
  return jnp.exp(log_ratio) - log_ratio - 1.0


def aggregate(loss_tokens: jax.Array, loss_mask: jax.Array, mode: str = "token_mean",
              norm_length: Optional[int] = None) -> jax.Array:
  """Scalar from per-token losses [batch, seq] over masked tokens.

  token_mean: sum over all masked tokens / their count (long answers weigh more; DAPO).
  seq_mean_token_mean: mean over each sequence's tokens, then mean over sequences that have
    at least one masked token (the original GRPO; short answers weigh more).
  seq_sum_norm: sum over all masked tokens / (batch * norm_length), norm_length a constant
    (default: seq), so no length bias at all (Dr. GRPO).
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"rl.loss_agg={mode!r} must be one of {AGGREGATIONS}")
  mask = loss_mask.astype(jnp.float32)
  masked = loss_tokens.astype(jnp.float32) * mask
  if mode == "token_mean":
    return masked.sum() / jnp.maximum(mask.sum(), 1.0)
  if mode == "seq_mean_token_mean":
    tokens_per_seq = mask.sum(axis=1)  # [batch]
    seq_means = masked.sum(axis=1) / jnp.maximum(tokens_per_seq, 1.0)
    nonempty = (tokens_per_seq > 0).astype(jnp.float32)
    return (seq_means * nonempty).sum() / jnp.maximum(nonempty.sum(), 1.0)
  length = loss_tokens.shape[1] if norm_length is None else norm_length
  return masked.sum() / (loss_tokens.shape[0] * length)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x over positions where mask is 1 (0 when none), as a float32 scalar."""
  return aggregate(x, mask, "token_mean")


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                loss_mask: jax.Array, clip_low: float = 0.2, clip_high: float = 0.2,
                agg: str = "token_mean",
                norm_length: Optional[int] = None) -> tuple[jax.Array, Metrics]:
  """Clipped-surrogate policy loss with separate low/high epsilons (PPO; DAPO's clip-higher).

  ratio = exp(logp - old_logp) is clipped to [1 - clip_low, 1 + clip_high]; the per-token loss
  is max(-A * ratio, -A * clipped_ratio). Metrics (over masked tokens): clip_fraction (tokens
  whose clipped term is the active one), its low / high parts, approx_kl (Schulman's k3 of
  KL(old || new)), ratio_mean, ratio_max.
  """
  mask = loss_mask.astype(jnp.float32)
  log_ratio = jnp.clip(logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32),
                       -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  adv = advantages.astype(jnp.float32)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  loss_tokens = jnp.maximum(unclipped, clipped)
  is_clipped = clipped > unclipped
  metrics = {
      "pg_loss": aggregate(loss_tokens, mask, agg, norm_length),
      "clip_fraction": _masked_mean(is_clipped, mask),
      "clip_fraction_low": _masked_mean(is_clipped & (ratio < 1.0), mask),
      "clip_fraction_high": _masked_mean(is_clipped & (ratio > 1.0), mask),
      "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, mask),
      "ratio_mean": _masked_mean(ratio, mask),
      "ratio_max": jnp.max(jnp.where(mask > 0, ratio, 0.0)),
  }
  return metrics["pg_loss"], metrics


def entropy_from_logits(logits: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Per-token entropy [batch, seq] float32 of softmax(logits [batch, seq, vocab]); 0 off-mask.

  Computed in float32 from log_softmax; vocabulary entries with -inf logits contribute 0.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  plogp = jnp.where(p > 0, p * logp, 0.0)
  return -plogp.sum(axis=-1) * loss_mask.astype(jnp.float32)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
               loss_mask: jax.Array, clip_eps: float = 0.2, agg: str = "token_mean",
               norm_length: Optional[int] = None) -> tuple[jax.Array, Metrics]:
  """Clipped value loss: 0.5 * max((v - R)^2, (v_clip - R)^2), v_clip = old + clip(v - old).

  Metrics: vf_loss, vf_clip_fraction (tokens where the clipped term is larger), value_mean.
  """
  mask = loss_mask.astype(jnp.float32)
  v = values.astype(jnp.float32)
  old = old_values.astype(jnp.float32)
  ret = returns.astype(jnp.float32)
  v_clipped = old + jnp.clip(v - old, -clip_eps, clip_eps)
  err = (v - ret) ** 2
  err_clipped = (v_clipped - ret) ** 2
  loss = aggregate(0.5 * jnp.maximum(err, err_clipped), mask, agg, norm_length)
  metrics = {
      "vf_loss": loss,
      "vf_clip_fraction": _masked_mean(err_clipped > err, mask),
      "value_mean": _masked_mean(v, mask),
  }
  return loss, metrics


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array, ref_logprobs: jax.Array,
              advantages: jax.Array, loss_mask: jax.Array, *, clip_low: float,
              clip_high: float, kl_coef: float, kl_estimator: str = "k3",
              entropy: Optional[jax.Array] = None, entropy_coef: float = 0.0,
              agg: str = "token_mean",
              norm_length: Optional[int] = None) -> tuple[jax.Array, Metrics]:
  """The GRPO actor loss: clipped surrogate + kl_coef * KL(policy || ref) - entropy_coef * H.

  advantages: [batch, seq] (grpo_advantages); entropy: [batch, seq] per-token entropy from
  entropy_from_logits, or None (then entropy_coef must be 0). All three terms are aggregated
  over the same generated tokens with the same mode, so retrieved tokens carry no loss.
  """
  pg_loss, metrics = policy_loss(logprobs, old_logprobs, advantages, loss_mask, clip_low,
                                 clip_high, agg, norm_length)
  kl_tokens = kl_penalty(logprobs, ref_logprobs, kl_estimator)
  kl = aggregate(kl_tokens, loss_mask, agg, norm_length)
  if entropy is None:
    assert entropy_coef == 0.0, "grpo_loss: entropy_coef > 0 needs the per-token entropy"
    ent = jnp.zeros((), jnp.float32)
  else:
    ent = aggregate(entropy, loss_mask, agg, norm_length)
  loss = pg_loss + kl_coef * kl - entropy_coef * ent
  metrics.update({"loss": loss, "kl": kl, "entropy": ent})
  return loss, metrics


def ppo_actor_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                   loss_mask: jax.Array, *, clip_low: float, clip_high: float,
                   entropy: Optional[jax.Array] = None, entropy_coef: float = 0.0,
                   ref_logprobs: Optional[jax.Array] = None, kl_estimator: str = "k1",
                   agg: str = "token_mean",
                   norm_length: Optional[int] = None) -> tuple[jax.Array, Metrics]:
  """The PPO actor loss: clipped surrogate - entropy_coef * H (the KL lives in the reward).

  advantages: [batch, seq] from gae (usually whitened). With ref_logprobs the KL to the
  reference is reported as a metric only.
  """
  pg_loss, metrics = policy_loss(logprobs, old_logprobs, advantages, loss_mask, clip_low,
                                 clip_high, agg, norm_length)
  if entropy is None:
    assert entropy_coef == 0.0, "ppo_actor_loss: entropy_coef > 0 needs the per-token entropy"
    ent = jnp.zeros((), jnp.float32)
  else:
    ent = aggregate(entropy, loss_mask, agg, norm_length)
  loss = pg_loss - entropy_coef * ent
  metrics.update({"loss": loss, "entropy": ent})
  if ref_logprobs is not None:
    metrics["kl"] = _masked_mean(kl_penalty(logprobs, ref_logprobs, kl_estimator), loss_mask)
  return loss, metrics
