"""Losses checked against hand computations written as explicit loops in numpy."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rag_r1_jax.rl import losses

# Row 0 has an <information> block at positions 2-3 inside the response; row 1 is padded.
MASK = np.array([[1, 1, 0, 0, 1, 1],
                 [1, 1, 1, 1, 0, 0]], np.float32)
LOGP = np.log(np.array([[0.5, 0.2, 0.9, 0.9, 0.3, 0.6],
                        [0.1, 0.7, 0.4, 0.5, 0.9, 0.9]], np.float32))
OLD = np.log(np.array([[0.4, 0.4, 0.1, 0.1, 0.3, 0.4],
                       [0.2, 0.5, 0.4, 0.2, 0.1, 0.1]], np.float32))
ADV = np.array([[1.0, 1.0, 9.0, 9.0, 1.0, 1.0],
                [-1.0, -1.0, -1.0, -1.0, 9.0, 9.0]], np.float32)


def _generated(b):
  return [t for t in range(6) if MASK[b, t]]


def _hand_aggregate(x, mode, norm_length=6):
  if mode == "token_mean":
    picked = [x[b, t] for b in range(2) for t in _generated(b)]
    return sum(picked) / len(picked)
  if mode == "seq_mean_token_mean":
    return sum(sum(x[b, t] for t in _generated(b)) / len(_generated(b)) for b in range(2)) / 2
  return sum(x[b, t] for b in range(2) for t in _generated(b)) / (2 * norm_length)


def _hand_kl(logp, ref, estimator):
  out = np.zeros((2, 6))
  for b in range(2):
    for t in range(6):
      d = float(logp[b, t]) - float(ref[b, t])
      out[b, t] = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1.0}[estimator]
  return out


def _hand_pg_tokens(logp, old, adv, lo, hi):
  out = np.zeros((2, 6))
  clipped = np.zeros((2, 6), bool)
  for b in range(2):
    for t in range(6):
      ratio = math.exp(float(logp[b, t]) - float(old[b, t]))
      unclipped_loss = -adv[b, t] * ratio
      clipped_loss = -adv[b, t] * min(max(ratio, 1 - lo), 1 + hi)
      out[b, t] = max(unclipped_loss, clipped_loss)
      clipped[b, t] = clipped_loss > unclipped_loss
  return out, clipped


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty(estimator):
  got = jax.jit(losses.kl_penalty, static_argnums=2)(LOGP, OLD, estimator)
  np.testing.assert_allclose(got, _hand_kl(LOGP, OLD, estimator), rtol=1e-5, atol=1e-6)
  if estimator != "k1":
    assert (np.asarray(got) >= 0).all()


def test_k3_value_and_bad_estimator():
  # logp = log .5, ref = log .25: exp(ref - logp) = .5, so k3 = .5 + log 2 - 1.
  got = losses.kl_penalty(jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]])), "k3")
  np.testing.assert_allclose(got, [[0.5 + math.log(2) - 1]], rtol=1e-6)
  with pytest.raises(ValueError, match="rl.kl_estimator"):
    losses.kl_penalty(LOGP, OLD, "k4")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_sum_norm"])
def test_aggregate_modes_ignore_masked_tokens(mode):
  x = np.arange(12, dtype=np.float32).reshape(2, 6)
  got = jax.jit(losses.aggregate, static_argnums=(2, 3))(x, MASK, mode, None)
  np.testing.assert_allclose(got, _hand_aggregate(x, mode), rtol=1e-6)
  poisoned = np.where(MASK > 0, x, 1e6).astype(np.float32)
  np.testing.assert_allclose(losses.aggregate(poisoned, MASK, mode), got, rtol=1e-6)


def test_aggregate_values_and_norm_length():
  x = np.arange(12, dtype=np.float32).reshape(2, 6)
  # Row 0 keeps 0, 1, 4, 5 (sum 10); row 1 keeps 6, 7, 8, 9 (sum 30).
  assert float(losses.aggregate(x, MASK, "token_mean")) == pytest.approx(40 / 8)
  assert float(losses.aggregate(x, MASK, "seq_mean_token_mean")) == pytest.approx(
      (10 / 4 + 30 / 4) / 2)
  assert float(losses.aggregate(x, MASK, "seq_sum_norm", 500)) == pytest.approx(40 / 1000)
  # seq_mean_token_mean skips rows without generated tokens; all-empty gives 0.
  mask3 = np.concatenate([MASK, np.zeros((1, 6), np.float32)])
  x3 = np.concatenate([x, np.ones((1, 6), np.float32)])
  assert float(losses.aggregate(x3, mask3, "seq_mean_token_mean")) == pytest.approx(5.0)
  assert float(losses.aggregate(x, np.zeros_like(MASK), "token_mean")) == 0.0
  with pytest.raises(ValueError, match="rl.loss_agg"):
    losses.aggregate(x, MASK, "mean")


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum_norm"])
def test_policy_loss_clipped_ratio(agg):
  lo, hi = 0.2, 0.28
  tokens, clipped = _hand_pg_tokens(LOGP, OLD, ADV, lo, hi)
  fn = jax.jit(functools.partial(losses.policy_loss, clip_low=lo, clip_high=hi, agg=agg))
  loss, metrics = fn(LOGP, OLD, ADV, MASK)
  np.testing.assert_allclose(loss, _hand_aggregate(tokens, agg), rtol=1e-5)
  picked = [(b, t) for b in range(2) for t in _generated(b)]
  ratios = [math.exp(float(LOGP[b, t]) - float(OLD[b, t])) for b, t in picked]
  np.testing.assert_allclose(metrics["clip_fraction"],
                             sum(clipped[b, t] for b, t in picked) / len(picked), rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_mean"], sum(ratios) / len(ratios), rtol=1e-5)
  np.testing.assert_allclose(metrics["ratio_max"], max(ratios), rtol=1e-5)
  np.testing.assert_allclose(
      metrics["approx_kl"],
      sum(r - 1 - math.log(r) for r in ratios) / len(ratios), rtol=1e-4)


def test_policy_loss_clip_higher_cases():
  # ratio 1.25 with A>0: clipped by clip_high=.2 but not by .28; ratio .5 with A<0: clipped low.
  logp = np.log(np.array([[1.25, 0.5, 1.0]], np.float32))
  old = np.zeros((1, 3), np.float32)
  adv = np.array([[1.0, -1.0, 2.0]], np.float32)
  mask = np.ones((1, 3), np.float32)
  loss, m = losses.policy_loss(logp, old, adv, mask, 0.2, 0.2)
  assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.0) / 3, rel=1e-5)
  assert float(m["clip_fraction"]) == pytest.approx(2 / 3)
  assert float(m["clip_fraction_high"]) == pytest.approx(1 / 3)
  assert float(m["clip_fraction_low"]) == pytest.approx(1 / 3)
  loss, m = losses.policy_loss(logp, old, adv, mask, 0.2, 0.28)
  assert float(loss) == pytest.approx((-1.25 + 0.8 - 2.0) / 3, rel=1e-5)
  assert float(m["clip_fraction_high"]) == 0.0
  # A clipped token passes no gradient; an unclipped one passes -A * ratio.
  grad = jax.grad(lambda lp: losses.policy_loss(lp, old, adv, mask, 0.2, 0.2)[0])(logp)
  np.testing.assert_allclose(grad, [[0.0, 0.0, -2.0 / 3]], atol=1e-6)


def test_entropy_from_logits_stable():
  logits = np.array([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, -np.inf, 0.0]],
                     [[np.log(0.5), np.log(0.25), np.log(0.25), -np.inf], [0.0] * 4]],
                    np.float32)
  mask = np.array([[1, 1], [1, 0]], np.float32)
  got = jax.jit(losses.entropy_from_logits)(logits, mask)
  expected = np.array([[math.log(4), 0.0],
                       [-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), 0.0]])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  bf16 = losses.entropy_from_logits(jnp.zeros((1, 1, 8), jnp.bfloat16), jnp.ones((1, 1)))
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, [[math.log(8)]], rtol=1e-6)


def test_value_loss_clipping():
  values = np.array([[0.5, 2.0, 9.0, 9.0, -1.0, 0.0]], np.float32)
  old = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
  returns = np.array([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]], np.float32)
  mask = MASK[:1]
  eps = 0.2
  per_token = []
  clipped_count = 0
  for t in _generated(0):
    v_clip = old[0, t] + min(max(values[0, t] - old[0, t], -eps), eps)
    a, c = (values[0, t] - returns[0, t]) ** 2, (v_clip - returns[0, t]) ** 2
    per_token.append(0.5 * max(a, c))
    clipped_count += c > a
  loss, m = jax.jit(losses.value_loss, static_argnums=(4, 5))(values, old, returns, mask, eps,
                                                              "token_mean")
  np.testing.assert_allclose(loss, sum(per_token) / 4, rtol=1e-6)
  np.testing.assert_allclose(m["vf_clip_fraction"], clipped_count / 4)
  np.testing.assert_allclose(m["value_mean"], (0.5 + 2.0 - 1.0 + 0.0) / 4)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum_norm"])
def test_grpo_loss_composes_terms(agg):
  ref = np.log(np.full((2, 6), 0.3, np.float32))
  entropy = np.linspace(0.1, 1.2, 12, dtype=np.float32).reshape(2, 6)
  kl_coef, ent_coef = 0.05, 0.01
  pg_tokens, _ = _hand_pg_tokens(LOGP, OLD, ADV, 0.2, 0.2)
  kl_tokens = _hand_kl(LOGP, ref, "k3")
  expected = _hand_aggregate(pg_tokens + kl_coef * kl_tokens - ent_coef * entropy, agg)
  fn = jax.jit(functools.partial(losses.grpo_loss, clip_low=0.2, clip_high=0.2,
                                 kl_coef=kl_coef, kl_estimator="k3", entropy_coef=ent_coef,
                                 agg=agg))
  loss, m = fn(LOGP, OLD, ref, ADV, MASK, entropy=entropy)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(m["kl"], _hand_aggregate(kl_tokens, agg), rtol=1e-5)
  np.testing.assert_allclose(m["entropy"], _hand_aggregate(entropy, agg), rtol=1e-5)
  np.testing.assert_allclose(m["loss"], loss)
  # At the start of a step (logp == old_logp) the surrogate's gradient is -A / count.
  g = jax.grad(lambda lp: losses.grpo_loss(lp, lp * 0 + OLD, OLD, ADV, MASK, clip_low=0.2,
                                           clip_high=0.2, kl_coef=0.0)[0])(OLD)
  np.testing.assert_allclose(g, -ADV * MASK / 8, rtol=1e-5, atol=1e-7)


def test_ppo_actor_loss():
  entropy = np.full((2, 6), 0.5, np.float32)
  pg_tokens, _ = _hand_pg_tokens(LOGP, OLD, ADV, 0.2, 0.3)
  loss, m = losses.ppo_actor_loss(LOGP, OLD, ADV, MASK, clip_low=0.2, clip_high=0.3,
                                  entropy=entropy, entropy_coef=0.01, ref_logprobs=OLD)
  np.testing.assert_allclose(loss, _hand_aggregate(pg_tokens, "token_mean") - 0.005,
                             rtol=1e-5)
  np.testing.assert_allclose(m["kl"], _hand_aggregate(_hand_kl(LOGP, OLD, "k1"), "token_mean"),
                             rtol=1e-5)
  with pytest.raises(AssertionError):
    losses.ppo_actor_loss(LOGP, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2, entropy_coef=0.1)


def test_k3_is_clamped_to_ten_with_zero_gradient_beyond():
  # diff = logp - ref: -5 gives e^5 - 6 = 142.4 (clamped to 10), 30 gives e^-20 + 19 (clamped),
  # 1 gives e^-1 = .368, -2 gives e^2 - 3 = 4.389 (both inside).
  diff = np.array([[-5.0, 30.0, 1.0, -2.0]], np.float32)
  ref = np.zeros_like(diff)
  got = losses.kl_penalty(diff, ref, "k3")
  np.testing.assert_allclose(got, [[10.0, 10.0, math.exp(-1), math.exp(2) - 3]], rtol=1e-6)
  # d k3 / d logp = 1 - exp(ref - logp) inside the clamp, 0 where it is active.
  grad = jax.grad(lambda lp: losses.kl_penalty(lp, ref, "k3").sum())(diff)
  np.testing.assert_allclose(grad, [[0.0, 0.0, 1 - math.exp(-1), 1 - math.exp(2)]], rtol=1e-6)
  # k1 and k2 are not clamped.
  np.testing.assert_allclose(losses.kl_penalty(diff, ref, "k1"), diff)
  np.testing.assert_allclose(losses.kl_penalty(diff, ref, "k2"), 0.5 * diff ** 2)


def _dual_clip_case():
  # ratios 5, 2, 5, .5 with advantages -1, -1, 1, -2.
  logp = np.log(np.array([[5.0, 2.0, 5.0, 0.5]], np.float32))
  return logp, np.zeros((1, 4), np.float32), np.array([[-1.0, -1.0, 1.0, -2.0]], np.float32)


def test_dual_clip_caps_negative_advantage_tokens():
  logp, old, adv = _dual_clip_case()
  mask = np.ones((1, 4), np.float32)
  # Per token: min(max(5, 1.2), 3) = 3; max(2, 1.2) = 2 (under the cap); max(-5, -1.2) = -1.2
  # (A > 0: no cap); max(1, 1.6) = 1.6 (under the cap 6).
  loss, m = losses.policy_loss(logp, old, adv, mask, 0.2, 0.2, clip_ratio_c=3.0)
  assert float(loss) == pytest.approx((3 + 2 - 1.2 + 1.6) / 4, rel=1e-6)
  assert float(m["dual_clip_fraction"]) == 0.25 and float(m["clip_fraction"]) == 0.5
  off, m_off = losses.policy_loss(logp, old, adv, mask, 0.2, 0.2)  # clip_ratio_c 0: off
  assert float(off) == pytest.approx((5 + 2 - 1.2 + 1.6) / 4, rel=1e-6)
  assert float(m_off["dual_clip_fraction"]) == 0.0
  # Only token 1 is unclipped: gradient -A * ratio / 4 = 0.5; the capped token passes none.
  grad = jax.grad(lambda lp: losses.policy_loss(lp, old, adv, mask, 0.2, 0.2,
                                                clip_ratio_c=3.0)[0])(logp)
  np.testing.assert_allclose(grad, [[0.0, 0.5, 0.0, 0.0]], atol=1e-6)
  # All masked: nothing to average.
  empty, m_empty = losses.policy_loss(logp, old, adv, 0 * mask, 0.2, 0.2, clip_ratio_c=3.0)
  assert float(empty) == 0.0 and float(m_empty["dual_clip_fraction"]) == 0.0


X = np.arange(12, dtype=np.float32).reshape(2, 6)  # row 0 keeps 0, 1, 4, 5; row 1 6, 7, 8, 9


@pytest.mark.parametrize("mode,two_rows,one_row", [
    ("token_mean", 40 / 8, 10 / 4),
    ("token_sum", 40.0, 10.0),
    ("seq_mean_token_mean", (10 / 4 + 30 / 4) / 2, 10 / 4),
    ("seq_mean_token_sum", (10 + 30) / 2, 10.0),
    ("seq_sum_norm", 40 / (2 * 6), 10 / 6),
])
def test_aggregations_empty_rows_all_masked_and_one_row(mode, two_rows, one_row):
  agg = functools.partial(losses.aggregate, mode=mode)
  assert float(agg(X, MASK)) == pytest.approx(two_rows, rel=1e-6)
  # An empty third row (a response with no generated token) changes no mode's value.
  x3 = np.concatenate([X, np.full((1, 6), 7.0, np.float32)])
  mask3 = np.concatenate([MASK, np.zeros((1, 6), np.float32)])
  assert float(agg(x3, mask3)) == pytest.approx(two_rows, rel=1e-6)
  assert float(agg(X, np.zeros_like(MASK))) == 0.0
  assert float(agg(X[:1], MASK[:1])) == pytest.approx(one_row, rel=1e-6)


def test_microbatch_weights_recombine_the_minibatch_aggregate():
  # Microbatch 0: MASK (8 tokens, 2 rows with tokens); microbatch 1: one token, one empty row.
  m1 = np.array([[1, 0, 0, 0, 0, 0], [0] * 6], np.float32)
  x1 = np.full((2, 6), 3.0, np.float32)
  expect = {"token_mean": ([8 / 9, 1 / 9], [8 / 9, 1 / 9]),
            "token_sum": ([1.0, 1.0], [8 / 9, 1 / 9]),
            "seq_mean_token_mean": ([2 / 3, 1 / 3], [2 / 3, 1 / 3]),
            "seq_mean_token_sum": ([2 / 3, 1 / 3], [2 / 3, 1 / 3]),
            "seq_sum_norm": ([2 / 3, 1 / 3], [2 / 3, 1 / 3])}
  for mode, (loss_w, metric_w) in expect.items():
    got_loss, got_metric = losses.microbatch_weights([MASK, m1], mode)
    np.testing.assert_allclose(got_loss, loss_w, rtol=1e-6)
    np.testing.assert_allclose(got_metric, metric_w, rtol=1e-6)
    parts = [losses.aggregate(X, MASK, mode), losses.aggregate(x1, m1, mode)]
    whole = losses.aggregate(np.concatenate([X, x1]), np.concatenate([MASK, m1]), mode)
    assert float(np.dot(got_loss, parts)) == pytest.approx(float(whole), rel=1e-6), mode
    np.testing.assert_allclose(losses.microbatch_weights([MASK, m1], mode, "mean")[0], [.5, .5])
  zero = np.zeros_like(MASK)
  np.testing.assert_allclose(losses.microbatch_weights([zero, zero], "token_mean")[1], [.5, .5])
  np.testing.assert_allclose(losses.microbatch_weights([MASK], "token_sum")[0], [1.0])
  with pytest.raises(ValueError, match="rl.microbatch_weighting='tokens'"):
    losses.microbatch_weights([MASK], "token_mean", "tokens")


def test_gspo_uses_the_sequence_ratio_with_a_token_gradient():
  lo, hi, adv = 0.01, 0.3, -ADV
  expected, grad = np.zeros((2, 6)), np.zeros((2, 6))
  for b in range(2):
    kept = _generated(b)
    s = math.exp(sum(float(LOGP[b, t]) - float(OLD[b, t]) for t in kept) / len(kept))
    for t in kept:
      unclipped, clipped = -adv[b, t] * s, -adv[b, t] * min(max(s, 1 - lo), 1 + hi)
      expected[b, t] = max(unclipped, clipped)
      grad[b, t] = -adv[b, t] * s / 8 if unclipped >= clipped else 0.0
  # Row 0: s = (1.25 x .5 x 1 x 1.5)^(1/4) = .984 < 1 - lo with A < 0: clipped, no gradient.
  # Row 1: s = (.5 x 1.4 x 1 x 2.5)^(1/4) = 1.150 < 1 + hi with A > 0: unclipped.
  fn = functools.partial(losses.gspo_policy_loss, clip_low=lo, clip_high=hi)
  loss, m = fn(LOGP, OLD, adv, MASK)
  np.testing.assert_allclose(loss, _hand_aggregate(expected, "token_mean"), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda lp: fn(lp, OLD, adv, MASK)[0])(LOGP), grad,
                             rtol=1e-5, atol=1e-7)
  assert float(m["clip_fraction"]) == pytest.approx(0.5)  # row 0's 4 of the 8 tokens
  assert float(m["ratio_max"]) == pytest.approx(1.75 ** 0.25, rel=1e-5)
  # At the start of a step every sequence ratio is 1, so GSPO's gradient is the vanilla one.
  g_gspo = jax.grad(lambda lp: fn(lp, OLD, adv, MASK)[0])(OLD)
  g_vanilla = jax.grad(lambda lp: losses.policy_loss(lp, OLD, adv, MASK, lo, hi)[0])(OLD)
  np.testing.assert_allclose(g_gspo, g_vanilla, rtol=1e-6)
  # One sample, and all masked.
  one, _ = fn(LOGP[:1], OLD[:1], adv[:1], MASK[:1])
  np.testing.assert_allclose(one, expected[0].sum() / 4, rtol=1e-5)
  assert float(fn(LOGP, OLD, ADV, 0 * MASK)[0]) == 0.0
  via_grpo, _ = losses.grpo_loss(LOGP, OLD, OLD, adv, MASK, clip_low=lo, clip_high=hi,
                                 kl_coef=0.0, policy_loss_mode="gspo")
  np.testing.assert_allclose(via_grpo, loss)
  with pytest.raises(ValueError, match="rl.policy_loss"):
    losses.grpo_loss(LOGP, OLD, OLD, adv, MASK, clip_low=lo, clip_high=hi, kl_coef=0.0,
                     policy_loss_mode="cispo")


def test_rollout_is_weights_truncate_token_and_sequence_ratios():
  # Trainer/sampler ratios: row 0 [2, .5, 3 (masked out)], row 1 [4, 1, 1], row 2 empty.
  old = np.log(np.array([[0.5, 0.2, 0.9], [0.8, 0.3, 0.3], [0.5, 0.5, 0.5]], np.float32))
  rollout = np.log(np.array([[0.25, 0.4, 0.3], [0.2, 0.3, 0.3], [0.1, 0.1, 0.1]], np.float32))
  mask = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], np.float32)
  w, m = losses.rollout_is_weights(old, rollout, mask, "token", 2.5)
  np.testing.assert_allclose(w, [[2, 0.5, 0], [2.5, 1, 1], [0, 0, 0]], rtol=1e-5)
  assert float(m["rollout_is_mean"]) == pytest.approx(7 / 5, rel=1e-5)
  assert float(m["rollout_is_clip_fraction"]) == pytest.approx(1 / 5)
  w, m = losses.rollout_is_weights(old, rollout, mask, "sequence", 2.5)
  # Row 0: 2 x .5 = 1; row 1: 4 x 1 x 1 = 4, truncated to 2.5.
  np.testing.assert_allclose(w, [[1, 1, 0], [2.5, 2.5, 2.5], [0, 0, 0]], rtol=1e-5)
  assert float(m["rollout_is_clip_fraction"]) == pytest.approx(3 / 5)
  # The weights scale each token's policy loss and carry no gradient themselves.
  adv = np.ones((3, 3), np.float32)
  loss, _ = losses.policy_loss(old, old, adv, mask, is_weights=w)
  assert float(loss) == pytest.approx(-(1 + 1 + 2.5 * 3) / 5, rel=1e-5)
  assert float(losses.rollout_is_weights(old, rollout, 0 * mask, "token", 2.0)[0].sum()) == 0
  with pytest.raises(ValueError, match="rl.rollout_is"):
    losses.rollout_is_weights(old, rollout, mask, "geometric", 2.0)
