"""Sparse retrieval with `bm25s` (Lucene BM25), English stopwords, no stemming.

The index is saved as a bm25s directory plus `meta.json` holding the corpus fingerprint;
loading it against another corpus is refused.
"""

import json
import os
from typing import Sequence

import bm25s
import numpy as np

from rag_r1_jax.retrieval.base import Document, RowRetriever
from rag_r1_jax.retrieval.docstore import DocStore, JsonlDocStore, ListDocStore
from rag_r1_jax.retrieval.index import IndexMismatchError

_META = "meta.json"
_DOCS = "docs.npy"


def _tokenize(texts: list[str], progress: bool = False):
  return bm25s.tokenize(texts, stopwords="en", show_progress=progress, return_ids=False)


class BM25Retriever(RowRetriever):
  """BM25 over a document store; ties and all-unknown queries give score-0 documents."""

  def __init__(self, model: bm25s.BM25, docs: DocStore):
    super().__init__()
    self.model = model
    self.docs = docs

  @classmethod
  def from_docstore(cls, docs: DocStore, k1: float = 1.5, b: float = 0.75,
                    progress: bool = False) -> "BM25Retriever":
    """Indexes every document's title and text (the tokenised corpus is held in memory)."""
    if len(docs) == 0:
      raise ValueError("cannot build a BM25 index over an empty corpus")
    texts = [f"{d.title} {d.text}" for d in docs.iter_documents()]
    model = bm25s.BM25(k1=k1, b=b)
    model.index(bm25s.tokenize(texts, stopwords="en", show_progress=progress),
                show_progress=progress)
    return cls(model, docs)

  @classmethod
  def from_documents(cls, documents: Sequence[Document], **kwargs) -> "BM25Retriever":
    return cls.from_docstore(ListDocStore(documents), **kwargs)

  def save(self, out_dir: str) -> None:
    """Writes the bm25s index and the corpus identity (and offsets for a JSONL corpus)."""
    os.makedirs(out_dir, exist_ok=True)
    self.model.save(out_dir, show_progress=False)
    meta = {"corpus_hash": self.docs.fingerprint, "count": len(self.docs)}
    if isinstance(self.docs, JsonlDocStore):
      self.docs.save(os.path.join(out_dir, _DOCS))
    with open(os.path.join(out_dir, _META), "w") as f:
      json.dump(meta, f, indent=1)

  @classmethod
  def load(cls, out_dir: str, corpus_path: str) -> "BM25Retriever":
    """Loads a saved index built from the JSONL corpus at `corpus_path`."""
    meta_path = os.path.join(out_dir, _META)
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"BM25 index {out_dir} has no {_META}; build it first")
    with open(meta_path) as f:
      meta = json.load(f)
    docs = JsonlDocStore.load(os.path.join(out_dir, _DOCS), corpus_path)
    if docs.fingerprint != meta["corpus_hash"]:
      raise IndexMismatchError(f"BM25 index {out_dir} was built from another corpus than "
                               f"{corpus_path}; rebuild it")
    return cls(bm25s.BM25.load(out_dir, show_progress=False, verbosity=0), docs)

  def search_rows(self, queries: Sequence[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
    """One batched bm25s lookup -> (scores [n, k] float32, rows [n, k] int64) with
    k = min(topk, corpus size); rows without any query term come last with score 0."""
    k = min(topk, len(self.docs))
    rows, scores = self.model.retrieve(_tokenize(list(queries)), k=k, show_progress=False,
                                       n_threads=1)  # [n, k] each
    return np.asarray(scores, np.float32), np.asarray(rows, np.int64)
