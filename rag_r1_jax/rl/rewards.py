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
from typing import Sequence

import numpy as np

from rag_r1_jax.eval import answer_metrics

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


def answer_rewards(answers: Sequence[str | None], golds_list: Sequence[Sequence[str]],
                   name: str, format_weight: float = 0.0,
                   responses: Sequence[str] = ()) -> np.ndarray:
  """Rewards [rows] float32: metric `name` of each row's final answer (None: it gave none),
  plus format_weight x format_reward of its response text (`responses`, one per row).

  With format_weight w > 0 (EM): correct and well-formed 1 + w, correct but malformed 1 - w,
  wrong but well-formed w, wrong and malformed -w. w = 0 is the paper's setting. The RL stage
  passes the rollout engine's answers: the policy's own last `<answer>`, never one quoted in
  an observation.
  """
  if name not in METRICS:
    raise ValueError(f"rl.reward={name!r} is not a known reward; valid: {sorted(METRICS)}")
  if len(answers) != len(golds_list):
    raise ValueError(f"{len(answers)} answers but {len(golds_list)} gold lists")
  if format_weight and len(responses) != len(answers):
    raise ValueError(f"the format term needs each row's response: {len(responses)} for "
                     f"{len(answers)} rows")
  out = []
  for i, (answer, golds) in enumerate(zip(answers, golds_list)):
    value = METRICS[name](answer, golds)
    if format_weight:
      value += format_weight * format_reward(responses[i])
    out.append(value)
  return np.asarray(out, np.float32)


def compute_rewards(responses: Sequence[str], golds_list: Sequence[Sequence[str]], name: str,
                    format_weight: float = 0.0) -> np.ndarray:
  """answer_rewards of response texts, each one's answer its last `<answer>`."""
  if len(responses) != len(golds_list):
    raise ValueError(f"{len(responses)} responses but {len(golds_list)} gold lists")
  answers = [answer_metrics.extract_last_answer(r) for r in responses]
  return answer_rewards(answers, golds_list, name, format_weight, responses)
