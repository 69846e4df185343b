"""GRPO and PPO losses: pure, jittable functions over masked token arrays.

Shapes: logprobs, old_logprobs, ref_logprobs, advantages, values, returns: [batch, seq] float;
loss_mask: [batch, seq] (1 on generated tokens; 0 on prompt, retrieved <information> tokens
and padding); logits: [batch, seq, vocab]. `logprobs[b, t]` is the log-prob of token t.
Every loss returns (scalar float32, metrics dict of scalar float32).
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

# exp() of a log-ratio beyond this overflows float32 long before it means anything.
_MAX_LOG_RATIO = 20.0
# The k3 estimate is clamped to [-10, 10] (veRL's low_var_kl): no gradient beyond, so one token
# whose policy log-prob fell far below the reference's adds at most 10, not up to e^20.
_MAX_K3 = 10.0
# GSPO's sequence log-ratio is clamped above at this (veRL's compute_policy_loss_gspo).
_MAX_SEQ_LOG_RATIO = 10.0

Metrics = dict[str, jax.Array]


def _k3(diff: jax.Array) -> jax.Array:
  log_ratio = jnp.clip(-diff, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # ref - logp
  return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -_MAX_K3, _MAX_K3)


# Per-token estimators of KL(policy || reference) from diff = logp - ref_logp [batch, seq].
KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "k1": lambda diff: diff,  # veRL "kl": unbiased, can be negative
    "k2": lambda diff: 0.5 * diff ** 2,  # veRL "mse"
    "k3": _k3,  # veRL "low_var_kl": unbiased before the clamp, non-negative
}


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token estimate [batch, seq] of KL(policy || reference) from policy samples.

  k1 = logp - ref (unbiased, high variance, can be negative); k2 = (logp - ref)^2 / 2;
  k3 = exp(ref - logp) - (ref - logp) - 1 (non-negative, low variance: the one Search-R1's
  GRPO uses), with ref - logp clipped to +-20 and the result clamped to [-10, 10] (as veRL:
  zero gradient where the clamp is active).
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"rl.kl_estimator={estimator!r} must be one of {tuple(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[estimator](logprobs.astype(jnp.float32) -
                                  ref_logprobs.astype(jnp.float32))


def _nonempty_rows(mask: jax.Array) -> jax.Array:
  """Scalar float32: rows with at least one masked token (at least 1, a divisor)."""
  return jnp.maximum((mask.sum(axis=1) > 0).sum().astype(jnp.float32), 1.0)


def _token_mean(masked, mask, norm_length):
  return masked.sum() / jnp.maximum(mask.sum(), 1.0)


def _token_sum(masked, mask, norm_length):
  return masked.sum()


def _seq_mean_token_mean(masked, mask, norm_length):
  seq_means = masked.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)  # 0 for an empty row
  return seq_means.sum() / _nonempty_rows(mask)


def _seq_mean_token_sum(masked, mask, norm_length):
  return masked.sum() / _nonempty_rows(mask)


def _seq_sum_norm(masked, mask, norm_length):
  return masked.sum() / (_nonempty_rows(mask) * norm_length)


# masked per-token losses [batch, seq], mask [batch, seq], norm_length -> scalar.
AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "token_mean": _token_mean,  # veRL "token-mean"
    "token_sum": _token_sum,  # veRL "token-sum"
    "seq_mean_token_mean": _seq_mean_token_mean,  # veRL "seq-mean-token-mean"
    "seq_mean_token_sum": _seq_mean_token_sum,  # veRL "seq-mean-token-sum"
    "seq_sum_norm": _seq_sum_norm,  # veRL "seq-mean-token-sum-norm"
}


def aggregate(loss_tokens: jax.Array, loss_mask: jax.Array, mode: str = "token_mean",
              norm_length: Optional[int] = None) -> jax.Array:
  """Scalar from per-token losses [batch, seq] over masked tokens (0 when none is masked).

  token_mean: sum over all masked tokens / their count (long answers weigh more; DAPO).
  token_sum: sum over all masked tokens, not normalised.
  seq_mean_token_mean: mean over each sequence's tokens, then mean over the sequences that
    have at least one masked token (the original GRPO; short answers weigh more).
  seq_mean_token_sum: sum over each sequence's tokens, then mean over those sequences.
  seq_sum_norm: sum over all masked tokens / (those sequences x norm_length), norm_length a
    constant (default: seq), so no length bias at all (Dr. GRPO).
  Rows without a masked token (an empty response) count in no denominator, as in veRL.
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"rl.loss_agg={mode!r} must be one of {tuple(AGGREGATIONS)}")
  mask = loss_mask.astype(jnp.float32)
  masked = loss_tokens.astype(jnp.float32) * mask
  length = loss_tokens.shape[1] if norm_length is None else norm_length
  return AGGREGATIONS[mode](masked, mask, length)


def aggregate_denominator(loss_mask, mode: str):
  """How much a (micro)batch counts in `aggregate`'s denominator: its masked tokens
  (token_mean), its rows with a masked token (the seq_* modes), None for token_sum (a plain
  sum). Works on numpy and JAX arrays [rows, seq]."""
  if mode == "token_sum":
    return None
  if mode == "token_mean":
    return loss_mask.sum()
  return (loss_mask.sum(axis=1) > 0).sum()


# Metrics aggregated with rl.loss_agg like the loss itself: microbatches combine them with the
# loss weights of `microbatch_weights`; the others (token means) with its metric weights.
LOSS_METRICS = ("loss", "pg_loss", "kl", "entropy", "vf_loss")


MICROBATCH_WEIGHTINGS = ("global", "mean")  # rl.microbatch_weighting
ROLLOUT_IS_LEVELS = ("token", "sequence")  # rl.rollout_is, when set


def microbatch_weights(loss_masks: Sequence, mode: str,
                       weighting: str = "global") -> tuple[jax.Array, jax.Array]:
  """(loss weights [M], metric weights [M]) combining M microbatches' aggregates into one.

  loss_masks: the M microbatches' masks [rows_i, seq_i] (numpy or JAX). With "global" (veRL's
  global token mean) the weighted sum of the microbatch aggregates is the aggregate of the
  whole minibatch: each weighs its share of the denominator (`aggregate_denominator`), and
  token_sum's microbatches add up (weight 1). With "mean" every microbatch weighs 1 / M.
  LOSS_METRICS combine like the loss; the other metrics (token means) are averaged by the same
  shares (token_sum's by masked tokens). A minibatch with no masked token gets 1 / M.
  """
  if weighting not in MICROBATCH_WEIGHTINGS:
    raise ValueError(f"rl.microbatch_weighting={weighting!r}; valid: {MICROBATCH_WEIGHTINGS}")
  count = len(loss_masks)
  equal = jnp.full((count,), 1.0 / count, jnp.float32)
  if weighting == "mean":
    return equal, equal
  share_mode = "token_mean" if mode == "token_sum" else mode
  shares = jnp.stack([jnp.asarray(aggregate_denominator(m, share_mode), jnp.float32)
                      for m in loss_masks])
  total = shares.sum()
  metric = jnp.where(total > 0, shares / jnp.maximum(total, 1.0), equal)
  loss = jnp.ones((count,), jnp.float32) if mode == "token_sum" else metric
  return loss, metric


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x over positions where mask is 1 (0 when none), as a float32 scalar."""
  return aggregate(x, mask, "token_mean")


def rollout_is_weights(old_logprobs: jax.Array, rollout_logprobs: jax.Array,
                       loss_mask: jax.Array, level: str,
                       threshold: float) -> tuple[jax.Array, Metrics]:
  """Truncated importance weights [batch, seq] of the trainer's old policy over the sampler's.

  Rollout correction (veRL's rollout_is / TIS): the sampler (bfloat16, another kernel) and
  the trainer give the same tokens slightly different log-probs; the policy loss of each token
  is multiplied by w = min(pi_old / pi_rollout, threshold), detached. level "token": one ratio
  per token; "sequence": the product over the sequence's masked tokens, shared by them. Log
  ratios are clipped to +-20. 0 off the mask. Metrics: rollout_is_mean (over masked tokens)
  and rollout_is_clip_fraction (tokens whose ratio exceeded the threshold).
  """
  mask = loss_mask.astype(jnp.float32)
  log_ratio = (old_logprobs.astype(jnp.float32) - rollout_logprobs.astype(jnp.float32)) * mask
  if level == "sequence":
    log_ratio = jnp.broadcast_to(log_ratio.sum(axis=1, keepdims=True), log_ratio.shape)
  elif level not in ROLLOUT_IS_LEVELS:
    raise ValueError(f"rl.rollout_is={level!r}; valid: {ROLLOUT_IS_LEVELS}")
  ratio = jnp.exp(jnp.clip(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO))
  weights = jax.lax.stop_gradient(jnp.minimum(ratio, threshold) * mask)
  metrics = {"rollout_is_mean": _masked_mean(weights, mask),
             "rollout_is_clip_fraction": _masked_mean(ratio > threshold, mask)}
  return weights, metrics


def _clipped_surrogate(ratio: jax.Array, adv: jax.Array, clip_low: float,
                       clip_high: float) -> tuple[jax.Array, jax.Array]:
  """Per-token max(-A * r, -A * clip(r, 1 - low, 1 + high)) and where the clipped term won."""
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  return jnp.maximum(unclipped, clipped), clipped > unclipped


def _pg_metrics(loss_tokens, is_clipped, ratio, log_ratio, mask, agg, norm_length,
                dual_clipped=None) -> Metrics:
  return {
      "pg_loss": aggregate(loss_tokens, mask, agg, norm_length),
      "clip_fraction": _masked_mean(is_clipped, mask),
      "clip_fraction_low": _masked_mean(is_clipped & (ratio < 1.0), mask),
      "clip_fraction_high": _masked_mean(is_clipped & (ratio > 1.0), mask),
      "dual_clip_fraction": (_masked_mean(dual_clipped, mask) if dual_clipped is not None
                             else jnp.zeros((), jnp.float32)),
      "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, mask),
      "ratio_mean": _masked_mean(ratio, mask),
      "ratio_max": jnp.max(jnp.where(mask > 0, ratio, 0.0)),
  }


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                loss_mask: jax.Array, clip_low: float = 0.2, clip_high: float = 0.2,
                agg: str = "token_mean", norm_length: Optional[int] = None,
                clip_ratio_c: float = 0.0,
                is_weights: Optional[jax.Array] = None) -> tuple[jax.Array, Metrics]:
  """Clipped-surrogate policy loss with separate low/high epsilons (PPO; DAPO's clip-higher).

  ratio = exp(logp - old_logp) is clipped to [1 - clip_low, 1 + clip_high]; the per-token loss
  is max(-A * ratio, -A * clipped_ratio). Dual clip (clip_ratio_c > 1; 0 turns it off): for
  A < 0 the loss is further capped at -A * clip_ratio_c, so a token whose ratio exploded
  passes no gradient. is_weights [batch, seq] (rollout_is_weights) multiply the per-token
  loss. Metrics (over masked tokens): clip_fraction (tokens whose clipped term is the active
  one), its low / high parts, dual_clip_fraction (A < 0 tokens at the cap), approx_kl
  (Schulman's k3 of KL(old || new)), ratio_mean, ratio_max.
  """
  mask = loss_mask.astype(jnp.float32)
  log_ratio = jnp.clip(logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32),
                       -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  adv = advantages.astype(jnp.float32)
  loss_tokens, is_clipped = _clipped_surrogate(ratio, adv, clip_low, clip_high)
  dual_clipped = None
  if clip_ratio_c > 0:
    cap = -adv * clip_ratio_c
    dual_clipped = (adv < 0) & (loss_tokens > cap)
    loss_tokens = jnp.where(adv < 0, jnp.minimum(loss_tokens, cap), loss_tokens)
  if is_weights is not None:
    loss_tokens = loss_tokens * is_weights
  metrics = _pg_metrics(loss_tokens, is_clipped, ratio, log_ratio, mask, agg, norm_length,
                        dual_clipped)
  return metrics["pg_loss"], metrics


def gspo_policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                     loss_mask: jax.Array, clip_low: float = 0.2, clip_high: float = 0.2,
                     agg: str = "token_mean", norm_length: Optional[int] = None,
                     clip_ratio_c: float = 0.0,
                     is_weights: Optional[jax.Array] = None) -> tuple[jax.Array, Metrics]:
  """GSPO's clipped surrogate with a sequence-level ratio (Zheng et al., 2025).

  s_i = exp(mean over sequence i's masked tokens of (logp - old_logp)), the log clamped above
  at 10; each token uses s_i * pi(t) / sg(pi(t)): the value s_i, the gradient of s_i * logp_t
  (veRL's token form). Clipping as policy_loss, with GSPO's much smaller epsilons in practice
  (the paper: 3e-4 / 4e-4); veRL aggregates GSPO with seq_mean_token_mean (rl.loss_agg).
  Dual clip does not apply (clip_ratio_c is ignored, as in veRL). Metrics as policy_loss.
  """
  del clip_ratio_c
  mask = loss_mask.astype(jnp.float32)
  logp = logprobs.astype(jnp.float32)
  log_ratio = (logp - old_logprobs.astype(jnp.float32)) * mask
  seq_log_ratio = log_ratio.sum(axis=1, keepdims=True) / jnp.maximum(
      mask.sum(axis=1, keepdims=True), 1.0)  # [batch, 1]
  token_log_ratio = jnp.minimum(jax.lax.stop_gradient(seq_log_ratio) + logp -
                                jax.lax.stop_gradient(logp), _MAX_SEQ_LOG_RATIO)
  ratio = jnp.exp(token_log_ratio)
  loss_tokens, is_clipped = _clipped_surrogate(ratio, advantages.astype(jnp.float32),
                                               clip_low, clip_high)
  if is_weights is not None:
    loss_tokens = loss_tokens * is_weights
  metrics = _pg_metrics(loss_tokens, is_clipped, ratio, token_log_ratio, mask, agg,
                        norm_length)
  return metrics["pg_loss"], metrics


# The policy-gradient term (veRL's actor.policy_loss.loss_mode).
POLICY_LOSSES = {"vanilla": policy_loss, "gspo": gspo_policy_loss}


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


def _policy_term(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high, agg,
                 norm_length, clip_ratio_c, policy_loss_mode, is_weights):
  if policy_loss_mode not in POLICY_LOSSES:
    raise ValueError(f"rl.policy_loss={policy_loss_mode!r} must be one of "
                     f"{tuple(POLICY_LOSSES)}")
  return POLICY_LOSSES[policy_loss_mode](logprobs, old_logprobs, advantages, loss_mask,
                                         clip_low, clip_high, agg, norm_length, clip_ratio_c,
                                         is_weights)


def _entropy_term(entropy, entropy_coef, loss_mask, agg, norm_length) -> jax.Array:
  if entropy is None:
    assert entropy_coef == 0.0, "entropy_coef > 0 needs the per-token entropy"
    return jnp.zeros((), jnp.float32)
  return aggregate(entropy, loss_mask, agg, norm_length)


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array, ref_logprobs: jax.Array,
              advantages: jax.Array, loss_mask: jax.Array, *, clip_low: float,
              clip_high: float, kl_coef: float, kl_estimator: str = "k3",
              entropy: Optional[jax.Array] = None, entropy_coef: float = 0.0,
              agg: str = "token_mean", norm_length: Optional[int] = None,
              clip_ratio_c: float = 0.0, policy_loss_mode: str = "vanilla",
              is_weights: Optional[jax.Array] = None) -> tuple[jax.Array, Metrics]:
  """The GRPO actor loss: policy term + kl_coef * KL(policy || ref) - entropy_coef * H.

  advantages: [batch, seq] (grpo_advantages); entropy: [batch, seq] per-token entropy from
  entropy_from_logits, or None (then entropy_coef must be 0). The policy term is
  POLICY_LOSSES[policy_loss_mode] (clip_ratio_c, is_weights: see policy_loss). All three
  terms are aggregated over the same generated tokens with the same mode, so retrieved tokens
  carry no loss.
  """
  pg_loss, metrics = _policy_term(logprobs, old_logprobs, advantages, loss_mask, clip_low,
                                  clip_high, agg, norm_length, clip_ratio_c, policy_loss_mode,
                                  is_weights)
  kl = aggregate(kl_penalty(logprobs, ref_logprobs, kl_estimator), loss_mask, agg, norm_length)
  ent = _entropy_term(entropy, entropy_coef, loss_mask, agg, norm_length)
  loss = pg_loss + kl_coef * kl - entropy_coef * ent
  metrics.update({"loss": loss, "kl": kl, "entropy": ent})
  return loss, metrics


def ppo_actor_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                   loss_mask: jax.Array, *, clip_low: float, clip_high: float,
                   entropy: Optional[jax.Array] = None, entropy_coef: float = 0.0,
                   ref_logprobs: Optional[jax.Array] = None, kl_estimator: str = "k1",
                   agg: str = "token_mean", norm_length: Optional[int] = None,
                   clip_ratio_c: float = 0.0, policy_loss_mode: str = "vanilla",
                   is_weights: Optional[jax.Array] = None) -> tuple[jax.Array, Metrics]:
  """The PPO actor loss: policy term - entropy_coef * H (the KL lives in the reward).

  advantages: [batch, seq] from gae (usually whitened). With ref_logprobs the KL to the
  reference (kl_estimator: the reward's) is reported as a metric only.
  """
  pg_loss, metrics = _policy_term(logprobs, old_logprobs, advantages, loss_mask, clip_low,
                                  clip_high, agg, norm_length, clip_ratio_c, policy_loss_mode,
                                  is_weights)
  ent = _entropy_term(entropy, entropy_coef, loss_mask, agg, norm_length)
  loss = pg_loss - entropy_coef * ent
  metrics.update({"loss": loss, "entropy": ent})
  if ref_logprobs is not None:
    # Aggregated like the loss: microbatches combine "kl" with the loss's weights.
    metrics["kl"] = aggregate(kl_penalty(logprobs, ref_logprobs, kl_estimator), loss_mask, agg,
                              norm_length)
  return loss, metrics
