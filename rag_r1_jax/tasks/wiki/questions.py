"""Questions over the packaged Wikipedia lead extracts, for the real-model CPU config.

Two kinds, both answered by article titles:
- single: `Which Wikipedia article has the short description "Painting by Georges Seurat"?`
  -> `A Sunday Afternoon on the Island of La Grande Jatte` (one article).
- pair: `Which two Wikipedia articles have the short descriptions "X" and "Y"?` -> `A and B`
  (either order is gold). It needs two articles: mq finds both in one search call, sq needs
  two, so rounds and seconds per question separate the two modes on real text.
Retrieval helps (a description is close to its article's text) but a model may also know the
answer. Articles go to train or test by a hash of the title, so the split is stable under any
subset; a pair joins two neighbouring described articles of one split.
"""

import dataclasses
import hashlib
import re
from typing import Sequence

from rag_r1_jax.retrieval import corpus
from rag_r1_jax.retrieval.base import Document

KINDS = ("single", "pair")


@dataclasses.dataclass(frozen=True)
class WikiQuestion:
  """A question and the articles (titles, document ids, descriptions) that answer it."""
  id: str
  kind: str  # one of KINDS
  question: str
  titles: tuple[str, ...]
  doc_ids: tuple[str, ...]  # the articles' ids in `documents`
  descriptions: tuple[str, ...]

  @property
  def golden_answers(self) -> list[str]:
    if len(self.titles) == 1:
      return [self.titles[0]]
    first, second = self.titles
    return [f"{first} and {second}", f"{second} and {first}"]

  def row(self) -> dict:
    """The FlashRAG-style row (id, question, golden_answers) the run's readers use."""
    return {"id": self.id, "question": self.question, "golden_answers": self.golden_answers}


def _is_test(title: str, test_fraction: float) -> bool:
  digest = hashlib.sha256(title.encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "little") / 2**32 < test_fraction


def articles(limit: int = 0) -> list[corpus.WikiArticle]:
  """The extracts in file order; the first `limit` (0: all)."""
  out = corpus.read_wiki_extracts()
  return out[:limit] if limit else out


def search_query(description: str) -> str:
  """The query a searcher sends for a description: commas (mq's query separator) dropped."""
  return re.sub(r"\s*,\s*", " ", description).strip()


def _described(arts: Sequence[corpus.WikiArticle], split: str, test_fraction: float):
  if split not in ("train", "test"):
    raise ValueError(f"wiki questions have splits train and test, not {split!r}")
  return [(i, a) for i, a in enumerate(arts)
          if a.description and _is_test(a.title, test_fraction) == (split == "test")]


def wiki_questions(arts: Sequence[corpus.WikiArticle], split: str, kind: str = "single",
                   test_fraction: float = 0.2) -> list[WikiQuestion]:
  """The `kind` questions of `split` ('train' or 'test') over `arts`."""
  described = _described(arts, split, test_fraction)
  if kind == "single":
    return [WikiQuestion(f"wiki-{i}", kind,
                         f'Which Wikipedia article has the short description "{a.description}"?',
                         (a.title,), (str(i),), (a.description,)) for i, a in described]
  if kind != "pair":
    raise ValueError(f"wiki question kind {kind!r}; valid: {KINDS}")
  out = []
  for (i, a), (j, b) in zip(described[0::2], described[1::2]):
    if a.description == b.description or a.title == b.title:
      continue  # the two articles would be interchangeable
    out.append(WikiQuestion(
        f"wiki-pair-{i}-{j}", kind,
        f'Which two Wikipedia articles have the short descriptions "{a.description}" and '
        f'"{b.description}"?', (a.title, b.title), (str(i), str(j)),
        (a.description, b.description)))
  return out


def questions(arts: Sequence[corpus.WikiArticle], split: str, kind: str = "single",
              test_fraction: float = 0.2) -> list[dict]:
  """FlashRAG-style rows (id, question, golden_answers) of `split` ('train' or 'test')."""
  return [q.row() for q in wiki_questions(arts, split, kind, test_fraction)]


def documents(arts: Sequence[corpus.WikiArticle]) -> list[Document]:
  """The retrieval corpus: each article's lead extract, titled."""
  return corpus.wiki_documents(arts)
