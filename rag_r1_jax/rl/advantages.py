"""Advantages for GRPO / Dr. GRPO / PPO: pure, jittable functions over masked token arrays.

Conventions (shared with `losses.py`):
  rewards:   [batch] float, one scalar per trajectory (exact match of the final answer).
  loss_mask: [batch, seq] float or bool, 1 on tokens the policy generated; 0 on the prompt,
             on retrieved `<information>` tokens (which may sit in the middle of a response)
             and on padding.
Token arrays are aligned so that position t belongs to token t (the caller shifts logits).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from rag_r1_jax.rl import losses

ADVANTAGE_MODES = ("grpo", "dr_grpo")


def group_ids_from_size(batch: int, group_size: int) -> jax.Array:
  """Group ids [batch] int32 for contiguous groups: rows [0, n) are group 0, [n, 2n) group 1..."""
  if group_size < 1 or batch % group_size:
    raise ValueError(
        f"rl.group_size={group_size} must be >= 1 and divide the batch size {batch}")
  return jnp.arange(batch, dtype=jnp.int32) // group_size


def group_normalize(rewards: jax.Array, group_ids: jax.Array, mode: str = "grpo",
                    eps: float = 1e-6) -> jax.Array:
  """Per-sequence advantages [batch]: reward minus its group's mean (GRPO: / (std + eps)).

  rewards: [batch] float; group_ids: [batch] int, equal ids share a prompt.
  The std is the unbiased (n-1) sample std, as veRL's GRPO uses. A group of one sample has
  no baseline and gets advantage 0 (veRL instead gives it its raw reward / (1 + eps), mean 0
  and std 1, so a lone sample is pushed up by its whole reward). Dr. GRPO ('dr_grpo') only
  centres, removing the question-level difficulty bias that the std division introduces
  (veRL's norm_adv_by_std_in_grpo=False).
  """
  if mode not in ADVANTAGE_MODES:
    raise ValueError(f"rl.advantage={mode!r} must be one of {ADVANTAGE_MODES}")
  rewards = rewards.astype(jnp.float32)
  # same[i, j]: samples i and j answer the same prompt. [batch, batch] is small (B <= ~4k).
  same = (group_ids[:, None] == group_ids[None, :]).astype(jnp.float32)
  count = same.sum(axis=1)  # [batch]
  mean = same @ rewards / count
  centred = rewards - mean
  if mode == "dr_grpo":
    return jnp.where(count > 1, centred, 0.0)
  # Rows of one group share one mean, so same @ centred**2 sums squared deviations per group.
  var = same @ (centred ** 2) / jnp.maximum(count - 1, 1)
  return jnp.where(count > 1, centred / (jnp.sqrt(var) + eps), 0.0)


def grpo_advantages(rewards: jax.Array, loss_mask: jax.Array, *,
                    group_size: Optional[int] = None, group_ids: Optional[jax.Array] = None,
                    mode: str = "grpo", eps: float = 1e-6) -> jax.Array:
  """Token advantages [batch, seq]: group-normalised rewards broadcast over generated tokens.

  Give exactly one of `group_size` (contiguous groups of n samples, static) or `group_ids`
  ([batch] int). Positions where loss_mask is 0 get advantage 0.
  """
  if (group_size is None) == (group_ids is None):
    raise ValueError("grpo_advantages: pass exactly one of group_size or group_ids")
  if group_ids is None:
    group_ids = group_ids_from_size(rewards.shape[0], group_size)
  per_seq = group_normalize(rewards, group_ids, mode, eps)  # [batch]
  return per_seq[:, None] * loss_mask.astype(jnp.float32)


def last_token_index(loss_mask: jax.Array) -> jax.Array:
  """Index [batch] int32 of the last position where loss_mask is 1 (0 for an empty row)."""
  seq = loss_mask.shape[1]
  reversed_first = jnp.argmax(loss_mask[:, ::-1] > 0, axis=1)
  return (seq - 1 - reversed_first).astype(jnp.int32)


def token_rewards(rewards: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Rewards [batch, seq] float32: each sequence's reward on its last generated token, 0 elsewhere.

  A row with no generated token gets no reward at all.
  """
  seq = loss_mask.shape[1]
  last = last_token_index(loss_mask)  # [batch]
  has_token = jnp.any(loss_mask > 0, axis=1)  # [batch]
  one_hot = jnp.arange(seq)[None, :] == last[:, None]  # [batch, seq]
  placed = one_hot & has_token[:, None]
  return jnp.where(placed, rewards.astype(jnp.float32)[:, None], 0.0)


def kl_penalized_rewards(token_reward: jax.Array, logprobs: jax.Array,
                         ref_logprobs: jax.Array, loss_mask: jax.Array,
                         kl_coef: float | jax.Array, estimator: str = "k1") -> jax.Array:
  """Token rewards [batch, seq] minus kl_coef * KL(policy || reference) on generated tokens.

  PPO puts the KL in the reward (GRPO puts it in the loss instead; see losses.grpo_loss).
  kl_coef may be a traced scalar (the adaptive controller's, rl/kl_control.py); estimator is
  rl.kl_reward_estimator (veRL's algorithm.kl_penalty).
  """
  kl = losses.kl_penalty(logprobs, ref_logprobs, estimator)  # [batch, seq]
  return token_reward - kl_coef * kl * loss_mask.astype(jnp.float32)


def gae(token_reward: jax.Array, values: jax.Array, loss_mask: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
  """GAE over generated tokens only: (advantages, returns), both [batch, seq] float32.

  token_reward, values: [batch, seq] float; loss_mask: [batch, seq].

  State masking: the MDP's time steps are the generated tokens. Positions with mask 0
  (prompt, retrieved <information> tokens, padding) are skipped, not treated as steps: for a
  generated token t the "next value" is the value at the next GENERATED token after t (0
  after the last one), and gamma / lambda discount once per generated token. Retrieved text
  is the environment's response, so the critic's value at the first token after an
  information block already summarises it. Rewards on masked positions are ignored, and
  advantages and returns are 0 there. Implemented as one reverse `lax.scan` over time.
  """
  mask = loss_mask.astype(jnp.float32)
  rewards = token_reward.astype(jnp.float32)
  values = values.astype(jnp.float32)
  batch = rewards.shape[0]

  def step(carry, xs):
    next_value, next_adv = carry  # [batch], [batch]: at the next generated token
    r, v, m = xs  # [batch] each
    delta = r + gamma * next_value - v
    adv = delta + gamma * lam * next_adv
    keep = m > 0
    carry = (jnp.where(keep, v, next_value), jnp.where(keep, adv, next_adv))
    return carry, jnp.where(keep, adv, 0.0)

  init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.float32))
  xs = (rewards.T, values.T, mask.T)  # time-major [seq, batch]
  _, adv_t = jax.lax.scan(step, init, xs, reverse=True)
  advantages = adv_t.T
  returns = (advantages + values) * mask
  return advantages, returns


def whiten(x: jax.Array, loss_mask: jax.Array, shift_mean: bool = True,
           eps: float = 1e-8) -> jax.Array:
  """x [batch, seq] normalised to zero mean / unit variance over masked positions; 0 elsewhere.

  Uses the unbiased variance (n - 1) over all n masked tokens of the batch, as veRL's
  masked_whiten. With one masked token (veRL raises) the variance is taken as 0, so the token
  gets (x - mean) / sqrt(eps) = 0; with none everything is 0. With shift_mean=False the mean
  is added back (only the scale changes).
  """
  mask = loss_mask.astype(jnp.float32)
  x = x.astype(jnp.float32)
  count = mask.sum()
  mean = (x * mask).sum() / jnp.maximum(count, 1.0)
  var = (((x - mean) ** 2) * mask).sum() / jnp.maximum(count - 1.0, 1.0)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask
