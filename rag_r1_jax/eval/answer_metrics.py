"""Answer scoring: SQuAD-style normalisation, exact match, token F1, cover-EM, Search-R1's
substring EM, answer extraction.

This module is the single source of scoring for rewards (`rl/rewards.py`) and evaluation
(`eval/summarize.py`). Every metric takes `prediction: str | None` (None, i.e. no answer,
scores 0) and `golds`: one gold string or a sequence of them; the score is the max over golds.
"""

import collections
import re
import string
from typing import Optional, Sequence, Union

from rag_r1_jax.rollout import search_call

Golds = Union[str, Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_INFORMATION_BLOCK = re.compile(r"<information>.*?(</information>|$)", re.DOTALL)


def normalize_answer(text: str) -> str:
  """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _as_list(golds: Golds) -> list[str]:
  """Golds as a list; a bare string is one gold (not a sequence of characters)."""
  if isinstance(golds, str):
    return [golds]
  golds = list(golds)
  if not all(isinstance(g, str) for g in golds):
    raise TypeError(f"golden answers must be strings, got {golds!r}")
  return golds


def exact_match(prediction: Optional[str], golds: Golds) -> float:
  """1.0 if the normalised prediction equals any normalised gold, else 0.0."""
  if prediction is None:
    return 0.0
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(g) for g in _as_list(golds)))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  """SQuAD token F1 of two token lists (two empty lists agree: 1.0)."""
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision = same / len(pred_tokens)
  recall = same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def f1(prediction: Optional[str], golds: Golds) -> float:
  """Token-level F1 between normalised prediction and gold, max over golds."""
  if prediction is None:
    return 0.0
  pred_tokens = normalize_answer(prediction).split()
  return max((_token_f1(pred_tokens, normalize_answer(g).split()) for g in _as_list(golds)),
             default=0.0)


def _contains_span(tokens: list[str], span: list[str]) -> bool:
  """Whether `span` (non-empty) occurs as a contiguous run inside `tokens`."""
  n = len(span)
  return any(tokens[i:i + n] == span for i in range(len(tokens) - n + 1))


def cover_exact_match(prediction: Optional[str], golds: Golds) -> float:
  """1.0 if some normalised gold appears as a whole-token span of the normalised prediction.

  Whole tokens: gold "1990" covers "in 1990" but gold "199" does not. A gold that normalises
  to nothing (e.g. "The") covers nothing.
  """
  if prediction is None:
    return 0.0
  pred_tokens = normalize_answer(prediction).split()
  for gold in _as_list(golds):
    gold_tokens = normalize_answer(gold).split()
    if gold_tokens and _contains_span(pred_tokens, gold_tokens):
      return 1.0
  return 0.0


def sub_exact_match(prediction: Optional[str], golds: Golds) -> float:
  """Search-R1's subEM: 1.0 if some normalised gold is a substring of the normalised prediction.

  Characters, not tokens (cf. cover_exact_match): gold "199" matches "in 1990", and a gold
  that normalises to nothing (e.g. "The") matches every prediction, as Search-R1's
  `subem_check` does; kept so that rewards and scores compare like for like.
  """
  if prediction is None:
    return 0.0
  pred = normalize_answer(prediction)
  return float(any(normalize_answer(g) in pred for g in _as_list(golds)))


def extract_last_answer(response_text: str) -> Optional[str]:
  """Content (stripped) of the last complete <answer>...</answer> in a RESPONSE, else None.

  Pass the model's response only, never the prompt: the paper's prompt carries the example
  "<answer> Beijing </answer>", which Search-R1's extractor scores when the response has no
  answer. Text inside <information> blocks (retrieved documents, not the model's words) is
  ignored, as is an unclosed trailing <answer>. The pair is the last <answer> before the last
  </answer> and the FIRST </answer> after it: "<answer>London</answer> blah </answer>" gives
  "London" (as Search-R1's non-greedy regex), and with nested or repeated open tags the content
  starts after the last <answer>.
  """
  text = _INFORMATION_BLOCK.sub(" ", response_text)
  span = search_call.last_complete_pair(text, search_call.ANSWER_OPEN,
                                        search_call.ANSWER_CLOSE)
  if span is None:
    return None
  return text[span[1]:span[2]].strip()
