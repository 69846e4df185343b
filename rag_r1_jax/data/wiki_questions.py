"""Questions over the packaged Wikipedia lead extracts, for the real-model CPU config.

Each article with a Wikidata short description gives one question whose answer is the
article's title: `Which Wikipedia article has the short description "Painting by Georges
Seurat"?` -> `A Sunday Afternoon on the Island of La Grande Jatte`. Retrieval helps (the
description is close to the article's text) but a model may also know the answer. Articles go
to train or test by a hash of the title, so the split is stable under any subset.
"""

import hashlib
from typing import Sequence

from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval import corpus


def _is_test(title: str, test_fraction: float) -> bool:
  digest = hashlib.sha256(title.encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "little") / 2**32 < test_fraction


def articles(limit: int = 0) -> list[corpus.WikiArticle]:
  """The extracts in file order; the first `limit` (0: all)."""
  out = corpus.read_wiki_extracts()
  return out[:limit] if limit else out


def questions(arts: Sequence[corpus.WikiArticle], split: str,
              test_fraction: float = 0.2) -> list[dict]:
  """FlashRAG-style rows (id, question, golden_answers) of `split` ('train' or 'test')."""
  if split not in ("train", "test"):
    raise ValueError(f"wiki questions have splits train and test, not {split!r}")
  rows = []
  for i, a in enumerate(arts):
    if not a.description or _is_test(a.title, test_fraction) != (split == "test"):
      continue
    rows.append({"id": f"wiki-{i}",
                 "question": f'Which Wikipedia article has the short description "{a.description}"?',
                 "golden_answers": [a.title]})
  return rows


def documents(arts: Sequence[corpus.WikiArticle]) -> list[Document]:
  """The retrieval corpus: each article's lead extract, titled."""
  return corpus.wiki_documents(arts)
