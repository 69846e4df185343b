"""GRPO and PPO with the rollout engine and retrieval in the loop raise the reward.

The scripted toy policy searches once, reads an observation, then answers "paris" or "beta"
with equal probability; the reward is exact match against "paris". Retrieved tokens sit in
the middle of every trajectory (masked out of the loss).
"""

import numpy as np
import pytest

from configs import common
from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout import engine as engine_lib
from rag_r1_jax.runs.rl_stage import trajectory_rewards
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from tests.sampling.toy import EOS, bigram_model, fork_after, toy_tokenizer

SUCCESSOR = {"Q:": "<search>", "<search>": "alpha", "alpha": "</search>",
             "paris": "</answer>", "beta": "</answer>"}


def _config(algorithm: str):
  c = common.base_config()
  c.rl.algorithm = algorithm
  c.rl.steps = 12
  c.rl.batch_size = 2
  c.rl.mini_batch_size = 2
  c.rl.group_size = 8 if algorithm == "grpo" else 4
  c.rl.learning_rate = 1e-3
  c.rl.critic_learning_rate = 0.01
  c.rl.warmup_ratio = 0.0
  c.rl.kl_coef = 0.0
  c.rl.entropy_coef = 0.0
  c.rl.weight_decay = 0.0
  return c


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_reward_rises_with_engine_in_the_loop(algorithm):
  tokenizer = toy_tokenizer()
  model = bigram_model(tokenizer, SUCCESSOR, default="<answer>", hidden=128)
  # After <answer>: "paris" and "beta" equally likely (the only uncertain step).
  fork_after(model, tokenizer, "<answer>", {"paris": 1.0, "beta": 1.0})
  config = _config(algorithm)
  state = train_state.create_rl_state(model, config)
  sampler = sampler_lib.Sampler(state.model(), tokenizer, capacity=256,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(EOS)])
  retriever = ExactRetriever([Document("d1", "Alpha", "alpha is near paris")])
  engine = engine_lib.RolloutEngine(sampler, tokenizer, retriever, engine_lib.RolloutSettings(
      mode="mq", max_turns=2, max_turn_tokens=8, max_obs_length=32, topk=1))
  prompts, golds = ["x Q:", "y Q:"], [["paris"], ["paris"]]
  sampling = SamplingParams(temperature=1.0)
  rewards = []
  for step in range(config.rl.steps):
    engine.sampler.update_params(state.params)
    rollout = engine.run(prompts, sampling=sampling, seed=step, group_size=config.rl.group_size)
    if step == 0:  # the scripted policy searches before answering
      assert np.mean([r.turns == 1 for r in rollout.records]) >= 0.8
    r = trajectory_rewards(rollout, golds, "em", 0.0)
    rewards.append(float(r.mean()))
    state, metrics = rl_trainer.rl_update(state, dict(rollout.tensors(), rewards=r), config)
    assert metrics["skipped"] == 0
  first, last = np.mean(rewards[:2]), np.mean(rewards[-2:])
  assert first < 0.75, rewards
  assert last >= 0.8 and last - first >= 0.25, rewards
