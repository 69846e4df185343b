"""The RL stage's per-step rollout metrics, exact on hand-made records."""

import numpy as np

from rag_r1_jax.rollout.trajectories import Rollout, RowRecord
from rag_r1_jax.runs import rl_stage


def _rollout(answers, prompt_index, turns):
  records = [RowRecord(prompt_index=p, response_text="", answer=a, turns=t,
                       queries_per_turn=[2] * t, finish_reason="answer" if a else "eos",
                       generated_tokens=5, prompt_tokens=3, total_tokens=10,
                       decode_seconds=0.0, retrieval_seconds=0.0, total_seconds=0.0)
             for a, p, t in zip(answers, prompt_index, turns)]
  n = len(records)
  zeros = np.zeros((n, 1))
  return Rollout(tokens=zeros, positions=zeros, attention_mask=zeros, loss_mask=zeros,
                 sampler_logprobs=zeros, group_ids=np.asarray(prompt_index), records=records)


def test_rollout_metrics_per_data_source():
  rollout = _rollout(["paris", "rome", None, "oslo"], [0, 0, 1, 2], [1, 2, 0, 1])
  golds = [["Paris"], ["Lima"], ["Oslo"]]
  rewards = np.array([1.0, 0.0, 0.0, 1.0])
  got = rl_stage.rollout_metrics(rollout, rewards, golds, ["nq", "hotpotqa", "nq"])
  assert got["em"] == 0.5 and got["reward"] == 0.5 and got["answer_rate"] == 0.75
  assert got["searches_per_question"] == 1.0 and got["queries_per_search"] == 2.0
  assert got["response_tokens"] == 7.0 and got["generated_tokens"] == 5.0
  # nq: rows 0, 1 (question 0) and 3 (question 2); hotpotqa: row 2.
  assert got["em/nq"] == 2 / 3 and got["reward/nq"] == 2 / 3
  assert got["em/hotpotqa"] == 0.0 and got["reward/hotpotqa"] == 0.0


def test_rollout_metrics_one_source_adds_nothing():
  rollout = _rollout(["paris"], [0], [1])
  got = rl_stage.rollout_metrics(rollout, np.array([1.0]), [["Paris"]], ["nq"])
  assert not any("/" in key for key in got)
