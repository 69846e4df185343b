"""The update's veRL-style settings, checked against direct computations: rollout correction,
GSPO and dual clip wired into the step, PPO's reward KL (its own estimator, a coefficient from
the controller), the critic's own minibatches, epochs, clipping and schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rag_r1_jax.rl import advantages as adv_lib
from rag_r1_jax.rl import losses
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.rl import step as rl_step
from tests.training import test_update_common as h

ROWS, SEQ = 16, 24


def _params(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _run(algorithm, batch, **rl):
  config = h.rl_config(algorithm=algorithm, **rl)
  state = train_state.create_rl_state(h.model(h.mesh(), seed=3), config)
  return rl_trainer.rl_update(state, batch, config)


def _direct_logprobs(batch):
  """The seed-3 model's log-probs of the batch's tokens, by a plain log_softmax."""
  model = h.model(h.mesh(), seed=3)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  logits = jax.jit(lambda b: model(b["tokens"], positions=b["positions"],
                                   attention_mask=b["attention_mask"])[0])(jb)
  logp = jax.nn.log_softmax(logits, axis=-1)
  direct = jnp.take_along_axis(logp[:, :-1], jb["tokens"][:, 1:, None], -1)[..., 0]
  return jnp.pad(direct, ((0, 0), (1, 0)))


@pytest.mark.parametrize("policy_loss,clip_ratio_c,level", [("vanilla", 0.0, "token"),
                                                            ("gspo", 3.0, "sequence")])
def test_rollout_correction_and_policy_loss_reach_the_step(policy_loss, clip_ratio_c, level):
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=5)
  direct = _direct_logprobs(batch)
  mask = jnp.asarray(batch["loss_mask"])
  adv = adv_lib.grpo_advantages(jnp.asarray(batch["rewards"]), mask,
                                group_ids=jnp.asarray(batch["group_ids"]))
  weights, is_metrics = losses.rollout_is_weights(direct, batch["sampler_logprobs"], mask, level,
                                                  1.5)
  expected, _ = losses.grpo_loss(direct, direct, direct, adv, mask, clip_low=0.2, clip_high=0.2,
                                 kl_coef=0.0, clip_ratio_c=clip_ratio_c,
                                 policy_loss_mode=policy_loss, is_weights=weights)
  plain, _ = losses.grpo_loss(direct, direct, direct, adv, mask, clip_low=0.2, clip_high=0.2,
                              kl_coef=0.0)
  assert abs(float(expected) - float(plain)) > 1e-3  # the weights matter here
  _, metrics = _run("grpo", batch, kl_coef=0.0, entropy_coef=0.0, rollout_is=level,
                    rollout_is_threshold=1.5, policy_loss=policy_loss, clip_ratio_c=clip_ratio_c)
  assert metrics["loss"] == pytest.approx(float(expected), abs=1e-6)
  assert metrics["rollout_is_mean"] == pytest.approx(float(is_metrics["rollout_is_mean"]),
                                                     rel=1e-5)
  assert metrics["rollout_is_clip_fraction"] == pytest.approx(
      float(is_metrics["rollout_is_clip_fraction"]), abs=1e-6)
  assert metrics["dual_clip_fraction"] == 0.0  # ratio 1 on the first update


def test_ppo_reward_kl_uses_its_estimator_and_the_given_coefficient():
  # Row 0 generates tokens 1-3, row 1 token 1 only; logp - ref = log 2, 0, -log 2 on row 0.
  mask = np.array([[0, 1, 1, 1], [0, 1, 0, 0]], np.float32)
  old = np.log(np.array([[1, .5, .5, .25], [1, .5, 1, 1]], np.float32)) * mask
  ref = np.log(np.array([[1, .25, .5, .5], [1, .25, 1, 1]], np.float32)) * mask
  b = {"loss_mask": mask, "old_logprobs": old, "ref_logprobs": ref, "sampler_logprobs": old,
       "rewards": np.array([1.0, 0.0], np.float32), "values": np.zeros((2, 4), np.float32)}
  b = {k: jnp.asarray(v) for k, v in b.items()}
  config = h.rl_config(algorithm="ppo", kl_coef=0.05, kl_estimator="k1",
                       kl_reward_estimator="k3", whiten_advantages=False)
  hp = rl_step.RLHparams.from_config(config)
  fields, metrics = rl_step.ppo_advantages(b, hp, jnp.float32(0.1))
  # k3 of log-ratio d = logp - ref: e^-d + d - 1 = .5 + log 2 - 1 (d = log 2), 0, 2 - log 2 - 1.
  k_up, k_down = 0.5 + np.log(2) - 1, 1 - np.log(2)
  # gamma = lambda = 1, values 0: the return is the reward-to-go, the KL charged per token.
  expected = [[0, 1 - 0.1 * (k_up + k_down), 1 - 0.1 * k_down, 1 - 0.1 * k_down],
              [0, -0.1 * k_up, 0, 0]]
  np.testing.assert_allclose(fields["returns"], expected, rtol=1e-5, atol=1e-7)
  assert float(metrics["kl_coef"]) == pytest.approx(0.1)
  assert float(metrics["kl_ref"]) == pytest.approx((2 * k_up + k_down) / 4, rel=1e-5)
  assert float(metrics["kl_ref_seq_mean"]) == pytest.approx(((k_up + k_down) / 3 + k_up) / 2,
                                                            rel=1e-5)


def test_critic_trains_in_its_own_minibatches_and_epochs():
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=4)
  kw = dict(batch_size=4, mini_batch_size=4, kl_coef=0.0, entropy_coef=0.0)
  joint, m_joint = _run("ppo", batch, **kw)
  same, m_same = _run("ppo", batch, critic_epochs=1, critic_mini_batch_size=4, **kw)
  apart, m_apart = _run("ppo", batch, critic_epochs=2, critic_mini_batch_size=2, **kw)
  assert "critic_updates" not in m_joint and "critic_updates" not in m_same
  for a, b in zip(_params((joint.params, joint.critic.params)),
                  _params((same.params, same.critic.params))):
    np.testing.assert_array_equal(a, b)
  assert m_apart["updates"] == 1 and m_apart["critic_updates"] == 4
  assert m_apart["critic_skipped"] == 0 and int(apart.step) == 1
  # The actor's update does not depend on the critic's schedule; the critic's does.
  for a, b in zip(_params(joint.params), _params(apart.params)):
    np.testing.assert_allclose(a, b, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(_params(joint.critic.params), _params(apart.critic.params)))
  assert int(opt_lib.update_count(apart.critic.opt_state)) == 4


def test_rl_schedules_and_optimizers_of_their_own():
  c = h.rl_config(steps=10)
  actor = train_state.rl_schedule(c.rl)
  assert actor == dict(learning_rate=1e-3, total_steps=10, warmup_ratio=0.0, schedule="constant",
                       warmup_steps=-1, min_lr_ratio=0.0)
  assert train_state.rl_schedule(c.rl, critic=True) == actor  # same lr in rl_config
  c.rl.update(critic_epochs=2, critic_mini_batch_size=2, critic_warmup_ratio=0.5,
              warmup_steps=3, min_lr_ratio=0.1, critic_learning_rate=0.5)
  assert train_state.rl_schedule(c.rl)["warmup_steps"] == 3
  assert train_state.rl_schedule(c.rl, critic=True) == dict(
      learning_rate=0.5, total_steps=40, warmup_ratio=0.5, schedule="constant", warmup_steps=-1,
      min_lr_ratio=0.1)
  c.rl.critic_warmup_steps = 4
  assert train_state.rl_schedule(c.rl, critic=True)["warmup_steps"] == 4
  hp = rl_step.RLHparams.from_config(c)
  assert (hp.critic_epochs, hp.critic_mini_batch_rows, hp.critic_microbatches) == (2, 8, 1)
  assert float(hp.lr(0, critic=True)) == pytest.approx(0.5 / 4)
  assert float(hp.lr(0)) == pytest.approx(1e-3 / 3)
  # The critic's optimizer clips at rl.critic_max_grad_norm, with the shared betas.
  c.rl.update(critic_max_grad_norm=0.5, max_grad_norm=1.0, adam_b1=0.5, adam_b2=0.9)
  params = {"w": jnp.array([1.0, -1.0])}
  grads = [{"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.3, -0.1])}]

  def updates(tx):
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(np.asarray(u["w"]))
    return out

  want = opt_lib.make_optimizer(**train_state.rl_schedule(c.rl, critic=True), max_grad_norm=0.5,
                                weight_decay=c.rl.weight_decay, b1=0.5, b2=0.9)
  got = updates(train_state.rl_optimizer(c.rl, critic=True))
  np.testing.assert_allclose(got, updates(want), rtol=1e-6)
  unclipped = opt_lib.make_optimizer(**train_state.rl_schedule(c.rl, critic=True),
                                     max_grad_norm=1.0, weight_decay=c.rl.weight_decay,
                                     b1=0.5, b2=0.9)
  assert np.abs(got[1] - updates(unclipped)[1]).max() > 1e-4
  assert isinstance(train_state.rl_optimizer(c.rl), optax.GradientTransformation)
