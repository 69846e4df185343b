"""Scripted demonstrations for stage 1: a response as segments the model writes or is given.

A task that can write correct trajectories itself (the synthetic world, the Wikipedia
extracts) returns them as (user prompt text, [Segment]) pairs; `training/sft/data.py` turns
them into token ids with the observations masked out of the loss.
"""

import dataclasses
from typing import Literal, Sequence

from rag_r1_jax import protocol as P


@dataclasses.dataclass(frozen=True)
class Segment:
  """A piece of a response: the model's own tokens ('policy') or an inserted observation."""
  text: str
  role: Literal["policy", "information"]


def trajectory_text(segments: Sequence[Segment]) -> str:
  """The response text: the segments concatenated."""
  return "".join(s.text for s in segments)


def thought(text: str) -> str:
  return f"{P.THINK_OPEN} {text} {P.THINK_CLOSE}"


def search_segment(reasoning: str, queries: Sequence[str]) -> Segment:
  return Segment(f"{thought(reasoning)}{P.SEARCH_OPEN} {', '.join(queries)} {P.SEARCH_CLOSE}",
                 "policy")


def answer_segment(reasoning: str, answer: str) -> Segment:
  return Segment(f"{thought(reasoning)}{P.ANSWER_OPEN} {answer} {P.ANSWER_CLOSE}", "policy")


def direct_answer(answer: str, reasoning: str = "I know this") -> list[Segment]:
  """A trajectory that answers without searching."""
  return [answer_segment(reasoning, answer)]


def cut_subsamples(segments: Sequence[Segment]) -> list[tuple[list[Segment], Segment]]:
  """The paper's sub-samples: one (context segments, target policy segment) per policy segment.

  The context is everything before the target (the prompt is added by the caller); the model
  thus learns both when to search and when to answer. Observations are never targets.
  """
  return [(list(segments[:i]), s) for i, s in enumerate(segments) if s.role == "policy"]
