"""Advantages checked against hand computations written as explicit loops in numpy."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rag_r1_jax.rl import advantages as adv_lib
from rag_r1_jax.rl import losses

# Two responses of 6 tokens. Row 0: generated, generated, <information>, <information>,
# generated, generated. Row 1: 4 generated tokens, then padding.
MASK = np.array([[1, 1, 0, 0, 1, 1],
                 [1, 1, 1, 1, 0, 0]], np.float32)


def _hand_gae(rewards, values, mask, gamma, lam):
  """GAE over generated positions only, one token at a time, backwards."""
  batch, seq = rewards.shape
  adv = np.zeros((batch, seq))
  for b in range(batch):
    next_value, next_adv = 0.0, 0.0
    for t in reversed(range(seq)):
      if mask[b, t] == 0:
        continue
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      adv[b, t] = delta + gamma * lam * next_adv
      next_value, next_adv = values[b, t], adv[b, t]
  return adv, (adv + values) * mask


def test_grpo_advantages_match_hand_computation():
  rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], np.float32)
  group_size, eps = 4, 1e-6
  expected = np.zeros(8)
  for g in range(2):
    r = rewards[g * 4:(g + 1) * 4].astype(np.float64)
    mean = sum(r) / 4
    std = (sum((x - mean) ** 2 for x in r) / 3) ** 0.5
    expected[g * 4:(g + 1) * 4] = (r - mean) / (std + eps)
  mask = np.ones((8, 3), np.float32)
  mask[0, 2] = 0
  got = adv_lib.grpo_advantages(jnp.asarray(rewards), jnp.asarray(mask),
                                group_size=group_size, mode="grpo", eps=eps)
  np.testing.assert_allclose(got, expected[:, None] * mask, rtol=1e-5, atol=1e-6)
  # Group 0 = [1, 0, 0, 1]: mean .5, unbiased std sqrt(1/3) -> +-0.866.
  np.testing.assert_allclose(got[0, 0], 0.5 / np.sqrt(1 / 3), rtol=1e-5)
  assert got[0, 2] == 0.0


def test_dr_grpo_only_centres_and_differs_from_grpo():
  rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
  mask = jnp.ones((6, 2))
  dr = adv_lib.grpo_advantages(rewards, mask, group_size=3, mode="dr_grpo")
  grpo = adv_lib.grpo_advantages(rewards, mask, group_size=3, mode="grpo")
  np.testing.assert_allclose(dr[:, 0], [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3],
                             rtol=1e-6)
  std = np.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # both groups have the same spread
  np.testing.assert_allclose(grpo[:, 0], dr[:, 0] / (std + 1e-6), rtol=1e-5)


def test_group_ids_equal_group_size_and_degenerate_groups():
  rewards = jnp.array([3.0, 1.0, 5.0, 5.0, 2.0])
  ids = jnp.array([7, 2, 7, 9, 2])  # groups {0, 2}, {1, 4}, {3} (alone)
  got = adv_lib.group_normalize(rewards, ids, "dr_grpo")
  np.testing.assert_allclose(got, [-1.0, -0.5, 1.0, 0.0, 0.5])
  # Identical rewards in a group: zero advantage, no division by zero.
  same = adv_lib.group_normalize(jnp.ones(4), jnp.array([0, 0, 1, 1]), "grpo")
  np.testing.assert_array_equal(same, np.zeros(4))
  by_size = adv_lib.grpo_advantages(rewards[:4], jnp.ones((4, 1)), group_size=2)
  by_ids = adv_lib.grpo_advantages(rewards[:4], jnp.ones((4, 1)),
                                   group_ids=jnp.array([0, 0, 1, 1]))
  np.testing.assert_array_equal(by_size, by_ids)
  with pytest.raises(ValueError, match="rl.group_size"):
    adv_lib.grpo_advantages(rewards, jnp.ones((5, 1)), group_size=2)
  with pytest.raises(ValueError, match="rl.advantage"):
    adv_lib.group_normalize(rewards, ids, "bogus")


def test_token_rewards_on_last_generated_token():
  mask = np.array([[1, 1, 0, 0, 1, 1],
                   [1, 1, 1, 0, 0, 0],
                   [0, 0, 0, 0, 0, 0],
                   [0, 1, 1, 0, 1, 0]], np.float32)
  rewards = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  expected = np.zeros_like(mask)
  for b in range(4):
    generated = [t for t in range(6) if mask[b, t]]
    if generated:
      expected[b, generated[-1]] = rewards[b]
  got = adv_lib.token_rewards(jnp.asarray(rewards), jnp.asarray(mask))
  np.testing.assert_array_equal(got, expected)
  assert got[1, 2] == 2.0 and got[3, 4] == 4.0 and not got[2].any()


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_skips_information_tokens(gamma, lam):
  rng = np.random.default_rng(0)
  values = rng.normal(size=(2, 6)).astype(np.float32)
  token_reward = np.asarray(adv_lib.token_rewards(jnp.array([1.0, -0.5]), MASK))
  exp_adv, exp_ret = _hand_gae(token_reward, values, MASK, gamma, lam)
  adv, ret = jax.jit(adv_lib.gae, static_argnums=(3, 4))(token_reward, values, MASK, gamma,
                                                         lam)
  np.testing.assert_allclose(adv, exp_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, exp_ret, rtol=1e-5, atol=1e-6)
  # Token 1 bootstraps from token 4, across the information block at 2-3.
  np.testing.assert_allclose(
      adv[0, 1], gamma * values[0, 4] - values[0, 1] + gamma * lam * exp_adv[0, 4], rtol=1e-5)
  assert adv[0, 2] == adv[0, 3] == ret[0, 2] == 0.0


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
  values = np.arange(12, dtype=np.float32).reshape(2, 6) / 10
  token_reward = np.asarray(adv_lib.token_rewards(jnp.array([1.0, 0.0]), MASK))
  adv, ret = adv_lib.gae(token_reward, values, MASK, 1.0, 1.0)
  np.testing.assert_allclose(ret, MASK * np.array([[1.0], [0.0]]), atol=1e-6)
  np.testing.assert_allclose(adv, (ret - values) * MASK, atol=1e-6)


def test_whiten_masked():
  x = np.array([[1.0, 2.0, 100.0, 100.0, 3.0, 4.0],
                [5.0, 6.0, 7.0, 8.0, -50.0, -50.0]], np.float32)
  picked = [x[b, t] for b in range(2) for t in range(6) if MASK[b, t]]
  mean = sum(picked) / len(picked)
  var = sum((p - mean) ** 2 for p in picked) / (len(picked) - 1)  # unbiased, as veRL's
  expected = (x - mean) / np.sqrt(var + 1e-8) * MASK
  got = jax.jit(adv_lib.whiten)(x, MASK)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # The 8 picked values 1..8: mean 4.5, unbiased variance 6 (population 5.25).
  np.testing.assert_allclose(got[0, 0], (1 - 4.5) / np.sqrt(6 + 1e-8), rtol=1e-6)
  kept = adv_lib.whiten(x, MASK, shift_mean=False)
  np.testing.assert_allclose(kept, (expected + mean) * MASK, rtol=1e-5)


def test_whiten_one_token_and_all_masked():
  x = np.array([[3.0, 9.0], [4.0, 5.0]], np.float32)
  one = np.array([[0, 1], [0, 0]], np.float32)
  np.testing.assert_array_equal(adv_lib.whiten(x, one), np.zeros((2, 2)))
  np.testing.assert_array_equal(adv_lib.whiten(x, np.zeros((2, 2))), np.zeros((2, 2)))
  np.testing.assert_allclose(adv_lib.whiten(x, one, shift_mean=False), [[0, 9.0], [0, 0]])
  # Two tokens 3 and 5: mean 4, unbiased variance 2.
  two = np.array([[1, 0], [0, 1]], np.float32)
  np.testing.assert_allclose(adv_lib.whiten(x, two), [[-1 / np.sqrt(2), 0], [0, 1 / np.sqrt(2)]],
                             rtol=1e-6)


def test_one_sample_group_gets_zero_advantage():
  rewards = jnp.array([1.0, 0.0, 1.0])
  ids = jnp.array([0, 0, 5])  # group 5 holds one sample
  for mode in ("grpo", "dr_grpo"):
    got = adv_lib.group_normalize(rewards, ids, mode)
    assert float(got[2]) == 0.0
  a = 0.5 / (np.sqrt(0.5) + 1e-6)
  np.testing.assert_allclose(adv_lib.group_normalize(rewards, ids, "grpo")[:2], [a, -a],
                             rtol=1e-5)
  np.testing.assert_array_equal(adv_lib.grpo_advantages(jnp.array([1.0]), jnp.ones((1, 3)),
                                                        group_size=1), np.zeros((1, 3)))


def test_kl_penalized_rewards():
  logp = np.log(np.array([[0.5, 0.25, 0.1, 0.1, 0.5, 0.5]] * 2, np.float32))
  ref = np.log(np.full((2, 6), 0.25, np.float32))
  token_reward = np.zeros((2, 6), np.float32)
  token_reward[0, 5] = 1.0
  got = adv_lib.kl_penalized_rewards(token_reward, logp, ref, MASK, 0.1, "k1")
  expected = token_reward - 0.1 * (logp - ref) * MASK
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(
      got, token_reward - 0.1 * np.asarray(losses.kl_penalty(logp, ref, "k1")) * MASK)
  # A traced coefficient (the adaptive controller's) and another estimator: k2 at token 0 is
  # (log 2)^2 / 2.
  k2 = jax.jit(lambda c: adv_lib.kl_penalized_rewards(token_reward, logp, ref, MASK, c, "k2"))(
      jnp.float32(0.5))
  np.testing.assert_allclose(k2[0, 0], -0.5 * 0.5 * np.log(2) ** 2, rtol=1e-5)
  assert k2[0, 2] == 0.0  # retrieved token


def test_jittable_with_traced_group_ids():
  f = jax.jit(lambda r, m, g: adv_lib.grpo_advantages(r, m, group_ids=g, mode="grpo"))
  got = f(jnp.array([1.0, 0.0, 1.0, 1.0]), jnp.ones((4, 2)), jnp.array([0, 0, 1, 1]))
  # [1, 0]: mean .5, unbiased std sqrt(.5); [1, 1]: no spread.
  a = 0.5 / (np.sqrt(0.5) + 1e-6)
  np.testing.assert_allclose(got[:, 0], [a, -a, 0.0, 0.0], rtol=1e-5)


_JIT_GAE = jax.jit(adv_lib.gae)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(seed=st.integers(0, 2 ** 31 - 1), gamma=st.floats(0.5, 1.0),
                  lam=st.floats(0.0, 1.0))
def test_gae_matches_hand_loop_on_random_masks(seed, gamma, lam):
  rng = np.random.default_rng(seed)
  mask = (rng.random((3, 7)) < 0.6).astype(np.float32)
  values = rng.normal(size=(3, 7)).astype(np.float32)
  rewards = np.asarray(adv_lib.token_rewards(jnp.asarray(rng.normal(size=3)), mask))
  exp_adv, exp_ret = _hand_gae(rewards, values, mask, gamma, lam)
  adv, ret = _JIT_GAE(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, exp_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ret, exp_ret, rtol=1e-4, atol=1e-5)
