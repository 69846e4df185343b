"""Start-up validation of the RL fields that mirror veRL's: each bad value names its field."""

import pytest

from configs import rag_r1
from rag_r1_jax import config_validation


def _problems(**rl) -> str:
  config = rag_r1.get_config("mq")
  config.rl.update(rl)
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    return str(e)
  return ""


@pytest.mark.parametrize("rl, problem", [
    (dict(clip_ratio_c=0.5), "config.rl.clip_ratio_c=0.5: must be 0 (off) or above 1"),
    (dict(loss_agg="mean"), "config.rl.loss_agg='mean': must be one of token_mean, token_sum, "
     "seq_mean_token_mean, seq_mean_token_sum, seq_sum_norm"),
    (dict(kl_reward_estimator="k4"), "config.rl.kl_reward_estimator='k4': must be one of k1"),
    (dict(policy_loss="cispo"), "config.rl.policy_loss='cispo': must be one of vanilla, gspo"),
    (dict(rollout_is="geometric"), "config.rl.rollout_is='geometric': must be one of , token"),
    (dict(rollout_is_threshold=0.0), "config.rl.rollout_is_threshold=0.0: must be positive"),
    (dict(microbatch_weighting="tokens"), "config.rl.microbatch_weighting='tokens'"),
    (dict(reward="acc"), "config.rl.reward='acc': must be one of em, f1, cover_em, sub_em"),
    (dict(kl_ctrl="adaptive"), "config.rl.kl_ctrl='adaptive': 'adaptive' steers the reward"),
    (dict(kl_horizon=0), "config.rl.kl_horizon=0: must be positive"),
    (dict(adam_b2=1.0), "config.rl.adam_b2=1.0: must be in [0, 1)"),
    (dict(min_lr_ratio=1.5), "config.rl.min_lr_ratio=1.5: must be in [0, 1]"),
    (dict(warmup_steps=-2), "config.rl.warmup_steps=-2: must be -1"),
    (dict(critic_warmup_ratio=1.0), "config.rl.critic_warmup_ratio=1.0: must be negative"),
    (dict(critic_epochs=-1), "config.rl.critic_epochs=-1: must be >= 0"),
    (dict(critic_mini_batch_size=3), "config.rl.critic_mini_batch_size=3: must be 0"),
    # 32 x 8 rows in 8 microbatches of 32: a 12-question critic minibatch has 96 rows.
    (dict(critic_mini_batch_size=12), "config.rl.critic_mini_batch_size=12: must be 0"),
])
def test_bad_rl_fields_are_named(rl, problem):
  assert problem in _problems(**rl)


@pytest.mark.parametrize("rl", [
    dict(clip_ratio_c=3.0, loss_agg="seq_mean_token_sum", policy_loss="gspo",
         rollout_is="sequence", reward="sub_em", microbatch_weighting="mean"),
    dict(algorithm="ppo", kl_coef=0.001, kl_ctrl="adaptive", group_size=1, oversample=1.0,
         critic_epochs=2, critic_mini_batch_size=16, critic_warmup_steps=3),
    dict(critic_mini_batch_size=2),  # 16 rows: inside one 32-row actor microbatch
    dict(warmup_steps=0, min_lr_ratio=0.1, schedule="cosine", adam_b1=0.0),
])
def test_good_rl_fields_validate(rl):
  assert _problems(**rl) == ""
