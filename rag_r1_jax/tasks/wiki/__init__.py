"""Questions over the packaged Wikipedia lead extracts (one article, or two: tasks/wiki/
questions.py), searched over those extracts; stage 1 from scripted demonstrations."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from rag_r1_jax.tasks.base import Task

if TYPE_CHECKING:
  from rag_r1_jax.retrieval.base import Document


@functools.lru_cache(maxsize=2)
def articles(limit: int):
  """The first `limit` packaged extracts (all for 0), read once per process."""
  from rag_r1_jax.tasks.wiki import questions
  return questions.articles(limit)


class WikiExtracts(Task):
  """`data.wiki_articles` extracts: train / test questions by article, the extracts as
  documents."""

  has_demonstrations = True

  @property
  def _articles(self):
    return articles(self.config.data.wiki_articles)

  def train_rows(self) -> list[dict]:
    from rag_r1_jax.tasks.wiki import questions
    return [row for kind in questions.KINDS
            for row in questions.questions(self._articles, "train", kind)]

  def eval_datasets(self) -> dict[str, list[dict]]:
    from rag_r1_jax.tasks.wiki import questions
    return {"wiki": questions.questions(self._articles, "test", "single"),
            "wiki_pairs": questions.questions(self._articles, "test", "pair")}

  def documents(self) -> Sequence[Document]:
    from rag_r1_jax.tasks.wiki import questions
    return questions.documents(self._articles)

  def demonstrations(self, retriever, truncate, prompt_variant):
    from rag_r1_jax.tasks.wiki import demonstrations
    return demonstrations.sft_examples(self.config, self._articles, retriever, truncate,
                                       prompt_variant)


TASK = WikiExtracts
