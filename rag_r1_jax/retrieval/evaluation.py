"""Retrieval quality on a question set: recall@k against gold document ids or answer strings.

A question file is JSONL, one row per question: `question` (the query), and `gold_ids` (the
corpus ids of the documents that answer it) and/or `golden_answers` (FlashRAG's field; answer
strings). A question counts as recalled at k when one of its top-k documents is gold, or, for
answers, when one of them has an answer: `has_answer` as DPR and FlashRAG compute it (NFD
unicode, uncased word and symbol tokens, the answer's tokens as a contiguous run of the
document's title and text).
"""

import dataclasses
import json
import unicodedata
from typing import Iterable, Sequence

import regex

from rag_r1_jax.retrieval import corpus as corpus_lib
from rag_r1_jax.retrieval.base import Document

# DPR's SimpleTokenizer: runs of letters / digits / marks, or any one other visible character.
_TOKEN_RE = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", regex.UNICODE)


@dataclasses.dataclass(frozen=True)
class Question:
  """One row of a question file; `gold_ids` and `answers` may each be empty, not both."""
  id: str
  question: str
  gold_ids: tuple[str, ...] = ()
  answers: tuple[str, ...] = ()


def _tokens(text: str) -> list[str]:
  return [t.lower() for t in _TOKEN_RE.findall(unicodedata.normalize("NFD", text))]


def has_answer(answers: Sequence[str], text: str) -> bool:
  """Whether some answer's tokens occur as a contiguous run of `text`'s tokens."""
  words = _tokens(text)
  for answer in answers:
    want = _tokens(answer)
    if want and any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1)):
      return True
  return False


def read_questions(path: str) -> list[Question]:
  """Questions of a JSONL file; a bad row raises ValueError naming file and line."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise ValueError(f"{where}: each row must be an object with a string 'question'")
      gold_ids, answers = row.get("gold_ids", []), row.get("golden_answers", [])
      if isinstance(answers, str):
        answers = [answers]
      for name, value in (("gold_ids", gold_ids), ("golden_answers", answers)):
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
          raise ValueError(f"{where}: '{name}' must be a list of strings")
      out.append(Question(str(row.get("id", line_no)), row["question"],
                          tuple(str(g) for g in gold_ids), tuple(str(a) for a in answers)))
  if not out:
    raise ValueError(f"{path} holds no questions")
  return out


def recall_at_k(questions: Sequence[Question], results: Sequence[Sequence[Document]],
                ks: Iterable[int]) -> dict[str, float]:
  """{'gold_recall@k': ..., 'answer_recall@k': ...} over the questions that have gold ids /
  answers (a kind no question has is left out), for each k."""
  assert len(questions) == len(results)
  by_ids = [(q, r) for q, r in zip(questions, results) if q.gold_ids]
  by_answers = [(q, r) for q, r in zip(questions, results) if q.answers]
  out = {}
  for k in ks:
    if by_ids:
      hits = [any(d.id in q.gold_ids for d in r[:k]) for q, r in by_ids]
      out[f"gold_recall@{k}"] = sum(hits) / len(hits)
    if by_answers:
      hits = [any(has_answer(q.answers, f"{d.title} {d.text}") for d in r[:k])
              for q, r in by_answers]
      out[f"answer_recall@{k}"] = sum(hits) / len(hits)
  return out


def wiki_questions(articles: Sequence[corpus_lib.WikiArticle],
                   doc_ids: Sequence[Sequence[str]]) -> list[Question]:
  """One question per distinct short description of the Wikipedia extracts: the description
  is the query; its gold ids are the documents (`doc_ids[i]`: those of article i) of every
  article with that description, and its answers those articles' titles."""
  assert len(articles) == len(doc_ids)
  groups: dict[str, list[int]] = {}
  for i, a in enumerate(articles):
    if a.description:
      groups.setdefault(a.description, []).append(i)
  return [Question(f"wiki-{members[0]}", description,
                   tuple(d for i in members for d in doc_ids[i]),
                   tuple(dict.fromkeys(articles[i].title for i in members)))
          for description, members in groups.items()]


def question_row(q: Question) -> dict:
  """The JSONL row `read_questions` reads back as `q`."""
  return {"id": q.id, "question": q.question, "gold_ids": list(q.gold_ids),
          "golden_answers": list(q.answers)}
