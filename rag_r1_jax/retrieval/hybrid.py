"""Hybrid retrieval: dense and BM25 over one corpus, their lists fused per query (fusion.py).

One `retrieve` call makes one batched dense lookup (one encode, one index search) and one
batched BM25 lookup, each `FusionParams.depth` deep (at least topk), fuses the row lists and
reads the fused rows' documents once. BM25 rows with score 0 (no query term in the
document) are dropped before fusion: their order is arbitrary.
"""

from typing import Sequence

import numpy as np

from rag_r1_jax.retrieval import fusion
from rag_r1_jax.retrieval.base import RowRetriever
from rag_r1_jax.retrieval.bm25 import BM25Retriever
from rag_r1_jax.retrieval.dense import DenseRetriever
from rag_r1_jax.retrieval.index import IndexMismatchError


class HybridRetriever(RowRetriever):
  """Dense + BM25 fused by reciprocal rank or by normalised weighted score."""

  def __init__(self, dense: DenseRetriever, bm25: BM25Retriever, params: fusion.FusionParams):
    super().__init__()
    if dense.docs is not bm25.docs and (len(dense.docs) != len(bm25.docs)
                                        or dense.docs.fingerprint != bm25.docs.fingerprint):
      raise IndexMismatchError(
          f"the dense index ({len(dense.docs)} rows) and the BM25 index ({len(bm25.docs)} rows) "
          "were built from different corpora; a hybrid retriever fuses rows of one corpus")
    self.dense = dense
    self.bm25 = bm25
    self.params = params
    self.docs = dense.docs

  def search_rows(self, queries: Sequence[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
    """-> fused (scores [n, topk] float64, rows [n, topk] int64; -1 past the fused rows)."""
    depth = max(topk, self.params.depth)
    dense = self.dense.search_rows(queries, depth)
    bm25_scores, bm25_rows = self.bm25.search_rows(queries, depth)
    bm25_rows = np.where(bm25_scores > 0, bm25_rows, -1)
    return fusion.fuse(self.params, dense, (bm25_scores, bm25_rows), topk)
