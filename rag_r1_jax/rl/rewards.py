"""Outcome rewards for RL: a named answer metric of the last <answer>, plus an optional format term.

Host-side, plain Python over decoded response text (the model's output with the inserted
<information> blocks, never the prompt). The paper's reward is 'em' with no format term
(config `rl.reward`, `rl.format_reward`). The reward is a per-trajectory scalar; placing it on
the final response token is the caller's job.

Where these differ from Search-R1's `qa_em.py` on purpose:
  - the answer is read from the response only: Search-R1 scores the prompt's example answer
    ("<answer> Beijing </answer>") of a response that gives none; here such a response scores 0;
  - 'cover_em' matches a gold as whole tokens of the prediction ("1990" covers "in 1990", "199"
    does not); 'sub_em' is Search-R1's subEM, a character substring ("199" matches "in 1990",
    and a gold that normalises to "" matches anything), for like-for-like comparisons.
Both take the last complete <answer>...</answer> pair, the first </answer> after its opening
tag closing it (answer_metrics.extract_last_answer).
"""

import re
from typing import Callable, Sequence

import numpy as np

from rag_r1_jax.eval import answer_metrics

RewardFn = Callable[[str, Sequence[str]], float]

# Answer metrics by `rl.reward` name: (prediction or None, golds) -> score.
METRICS = {
    "em": answer_metrics.exact_match,
    "f1": answer_metrics.f1,
    "cover_em": answer_metrics.cover_exact_match,
    "sub_em": answer_metrics.sub_exact_match,
}
_TAG = re.compile(r"<(/?)(think|search|information|answer)>")
_TAG_LETTER = {"think": "T", "search": "S", "information": "I", "answer": "A"}
# Each step is a <think> followed by a search and its inserted information, or by the answer.
_WELL_FORMED_STEPS = re.compile(r"(TSI)*TA")


def _metric_reward(metric: Callable) -> RewardFn:
  """A reward function scoring the last <answer> of a response with `metric`."""
  def reward(response_text: str, golds: Sequence[str]) -> float:
    return metric(answer_metrics.extract_last_answer(response_text), golds)
  reward.__name__ = f"{metric.__name__}_reward"
  return reward


REWARDS: dict[str, RewardFn] = {name: _metric_reward(m) for name, m in METRICS.items()}


def get_reward_fn(name: str) -> RewardFn:
  """The reward function registered as `name` (config `rl.reward`)."""
  if name not in REWARDS:
    raise ValueError(f"rl.reward={name!r} is not a known reward; valid: {sorted(REWARDS)}")
  return REWARDS[name]


def _block_sequence(response_text: str) -> str | None:
  """Letters of the top-level tag blocks (e.g. 'TSITA'), or None if anything is out of place.

  Out of place: non-whitespace text outside blocks, an unclosed block, or a tag inside a block.
  """
  letters = []
  pos = 0
  while True:
    while pos < len(response_text) and response_text[pos].isspace():
      pos += 1
    if pos == len(response_text):
      return "".join(letters)
    opening = _TAG.match(response_text, pos)
    if opening is None or opening.group(1):
      return None
    name = opening.group(2)
    close = response_text.find(f"</{name}>", opening.end())
    if close < 0 or _TAG.search(response_text, opening.end(), close):
      return None
    letters.append(_TAG_LETTER[name])
    pos = close + len(name) + 3


def is_well_formed(response_text: str) -> bool:
  """Whether a response is think, (search, information, think)*, answer, and nothing else."""
  sequence = _block_sequence(response_text)
  return sequence is not None and _WELL_FORMED_STEPS.fullmatch(sequence) is not None


def format_reward(response_text: str) -> float:
  """+1 for a well-formed response, -1 otherwise (scaled by `rl.format_reward`)."""
  return 1.0 if is_well_formed(response_text) else -1.0


def compute_rewards(responses: Sequence[str], golds_list: Sequence[Sequence[str]], name: str,
                    format_weight: float = 0.0) -> np.ndarray:
  """Rewards [batch] float32: metric `name` of each response + format_weight * format_reward.

  With format_weight w > 0 (EM): correct and well-formed 1 + w, correct but malformed 1 - w,
  wrong but well-formed w, wrong and malformed -w. w = 0 is the paper's setting.
  """
  if len(responses) != len(golds_list):
    raise ValueError(f"{len(responses)} responses but {len(golds_list)} gold lists")
  reward_fn = get_reward_fn(name)
  rewards = np.zeros(len(responses), np.float32)
  for i, (response, golds) in enumerate(zip(responses, golds_list)):
    rewards[i] = reward_fn(response, golds)
    if format_weight:
      rewards[i] += format_weight * format_reward(response)
  return rewards
