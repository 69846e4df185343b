"""Rewards: named metrics over the last answer, the format term, the batch function."""

import numpy as np
import pytest

from rag_r1_jax.data import prompts
from rag_r1_jax.rl import rewards

GOOD = ("<think>Need the author.</think>\n<search> hamlet author </search>\n\n"
        "<information>Doc 1(Title: Hamlet) by William Shakespeare</information>\n\n"
        "<think>Found it.</think>\n<answer> William Shakespeare </answer>")


def _reward(name, response, golds):
  [value] = rewards.compute_rewards([response], [golds], name)
  return float(value)


def test_registry_rewards_use_the_last_answer():
  golds = ["Shakespeare", "William Shakespeare"]
  assert _reward("em", GOOD, golds) == 1.0
  assert _reward("em", GOOD, ["Shakespeare"]) == 0.0
  assert _reward("f1", GOOD, ["Shakespeare"]) == pytest.approx(2 / 3)
  assert _reward("cover_em", GOOD, ["Shakespeare"]) == 1.0
  two = "<answer> Marlowe </answer> <answer> Shakespeare </answer>"
  assert _reward("em", two, ["Marlowe"]) == 0.0
  assert _reward("em", "<answer>London</answer> blah </answer>", ["London"]) == 1.0
  assert _reward("sub_em", GOOD, ["Shakes"]) == 1.0
  assert _reward("cover_em", GOOD, ["Shakes"]) == 0.0


def test_trajectory_rewards_use_the_same_metrics():
  from rag_r1_jax.rollout.trajectories import Rollout, RowRecord
  from rag_r1_jax.runs.rl_stage import trajectory_rewards
  records = [RowRecord(prompt_index=i, response_text="", answer=a, turns=0, queries_per_turn=[],
                       finish_reason="answer", generated_tokens=1, prompt_tokens=1,
                       total_tokens=2, decode_seconds=0.0, retrieval_seconds=0.0,
                       total_seconds=0.0) for i, a in enumerate(["in 1990", "1990", None])]
  rollout = Rollout(*(np.zeros((3, 1)),) * 5, group_ids=np.zeros(3), records=records)
  golds = [["199"], ["1990"], ["1990"]]
  np.testing.assert_array_equal(trajectory_rewards(rollout, golds, "sub_em", 0.0), [1, 1, 0])
  np.testing.assert_array_equal(trajectory_rewards(rollout, golds, "cover_em", 0.0), [0, 1, 0])


def test_unknown_reward_lists_valid_names():
  with pytest.raises(ValueError, match=r"rl.reward='acc'.*\['cover_em', 'em', 'f1', 'sub_em'\]"):
    rewards.answer_rewards(["x"], [["x"]], "acc")


@pytest.mark.parametrize("text,ok", [
    (GOOD, True),
    ("<think>easy</think><answer> Paris </answer>", True),
    ("  <think>a</think>\n<answer>b</answer>\n", True),
    ("<answer> Paris </answer>", False),  # no reasoning first
    ("<think>a</think> Paris <answer>b</answer>", False),  # text outside blocks
    ("<think>a</think><search> q </search>", False),  # never answered
    ("<think>a</think><search> q </search><think>b</think><answer>c</answer>", False),
    ("<think>a<search> q </search></think><answer>c</answer>", False),  # tag inside a block
    ("<think>a</think><answer>b</answer><think>c</think>", False),  # text after the answer
    ("<think>a</think><answer>b", False),  # unclosed
    ("", False),
])
def test_well_formed(text, ok):
  assert rewards.is_well_formed(text) is ok
  assert rewards.format_reward(text) == (1.0 if ok else -1.0)


def test_compute_rewards_batch_with_and_without_format_term():
  responses = [GOOD, "<answer> William Shakespeare </answer>",
               "<think>x</think><answer>no</answer>", "I give up"]
  golds = [["William Shakespeare"]] * 4
  out = rewards.compute_rewards(responses, golds, "em")
  assert out.dtype == np.float32 and out.shape == (4,)
  np.testing.assert_array_equal(out, [1.0, 1.0, 0.0, 0.0])
  out = rewards.compute_rewards(responses, golds, "em", format_weight=0.1)
  np.testing.assert_allclose(out, [1.1, 0.9, 0.1, -0.1], rtol=1e-6)


def test_compute_rewards_never_reads_the_prompt_example():
  prompt = prompts.build_prompt("What is the capital of China", "paper_mq")
  out = rewards.compute_rewards(["<think>no idea</think>"], [["Beijing"]], "em")
  assert out.tolist() == [0.0]
  assert "<answer> Beijing </answer>" in prompt


def test_compute_rewards_length_mismatch():
  with pytest.raises(ValueError, match="2 responses but 1 gold lists"):
    rewards.compute_rewards(["a", "b"], [["a"]], "em")
