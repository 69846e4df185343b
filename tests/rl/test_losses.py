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
