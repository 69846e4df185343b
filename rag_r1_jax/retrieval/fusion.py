"""Rank fusion of several retrievers' best-first lists: reciprocal-rank and weighted-score.

Pure functions over row arrays (numpy, no documents): each retriever gives `rows` [n, depth]
int64 (a row of the shared corpus, -1 for none) and `scores` [n, depth], best first. A
retriever that did not return a row adds nothing to that row's fused score. Ties in the fused
score go to the row seen first when the lists are read rank by rank (rank 1 of every
retriever in order, then rank 2, ...), so results are deterministic.

- rrf (Cormack et al. 2009): fused(d) = sum_i w_i / (rrf_k + rank_i(d)), ranks from 1.
- weighted: each retriever's scores of one query are min-max normalised over the rows it
  returned (best -> 1, worst -> 0; all equal -> 1), then fused(d) = sum_i w_i * norm_i(d).
"""

import dataclasses
from typing import Sequence

import numpy as np

FUSION_METHODS = ("rrf", "weighted")


@dataclasses.dataclass(frozen=True)
class FusionParams:
  """How a hybrid retriever combines its dense and BM25 lists (config.retrieval.fusion*)."""
  method: str = "rrf"  # rrf | weighted
  dense_weight: float = 1.0
  bm25_weight: float = 1.0
  rrf_k: float = 60.0
  depth: int = 20  # candidates each retriever returns per query before fusion (>= topk)

  def __post_init__(self):
    if self.method not in FUSION_METHODS:
      raise ValueError(f"fusion method must be one of {FUSION_METHODS}, got {self.method!r}")
    if self.dense_weight < 0 or self.bm25_weight < 0 or self.dense_weight + self.bm25_weight <= 0:
      raise ValueError("fusion weights must be >= 0 with a positive sum, got dense "
                       f"{self.dense_weight}, bm25 {self.bm25_weight}")
    if self.rrf_k < 0:
      raise ValueError(f"rrf_k must be >= 0, got {self.rrf_k}")
    if self.depth < 1:
      raise ValueError(f"fusion depth must be >= 1, got {self.depth}")


def reciprocal_rank_fusion(rows: Sequence[np.ndarray], weights: Sequence[float], rrf_k: float,
                           topk: int) -> tuple[np.ndarray, np.ndarray]:
  """rows: one [n, depth_i] int array per retriever -> (scores [n, topk] float64,
  rows [n, topk] int64), best first, -1 / 0.0 past the last fused row."""
  contributions = [np.broadcast_to(w / (rrf_k + np.arange(1, r.shape[1] + 1)), r.shape)
                   for r, w in zip(rows, weights)]
  return _fuse(rows, contributions, topk)


def weighted_score_fusion(scores: Sequence[np.ndarray], rows: Sequence[np.ndarray],
                          weights: Sequence[float], topk: int) -> tuple[np.ndarray, np.ndarray]:
  """scores, rows: one [n, depth_i] array each per retriever -> (scores [n, topk] float64,
  rows [n, topk] int64), best first; scores are min-max normalised per query and retriever."""
  contributions = [w * min_max_normalize(s, r) for s, r, w in zip(scores, rows, weights)]
  return _fuse(rows, contributions, topk)


def min_max_normalize(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """[n, depth] scores -> [n, depth] in [0, 1] per query over the valid rows (rows >= 0);
  a query whose valid scores are all equal gets 1.0; invalid entries get 0.0."""
  valid = rows >= 0
  s = np.asarray(scores, np.float64)
  lo = np.where(valid, s, np.inf).min(axis=1, keepdims=True)  # [n, 1]
  hi = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
  span = hi - lo
  with np.errstate(invalid="ignore", divide="ignore"):
    norm = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 1.0)
  return np.where(valid, norm, 0.0)


def _fuse(rows: Sequence[np.ndarray], contributions: Sequence[np.ndarray],
          topk: int) -> tuple[np.ndarray, np.ndarray]:
  """Sums each row's contributions per query and keeps the topk best (ties: first seen)."""
  n = rows[0].shape[0]
  assert all(r.shape[0] == n for r in rows) and len(rows) == len(contributions)
  out_scores = np.zeros((n, topk), np.float64)
  out_rows = np.full((n, topk), -1, np.int64)
  depth = max(r.shape[1] for r in rows)
  for q in range(n):
    fused: dict[int, float] = {}
    for rank in range(depth):
      for r, c in zip(rows, contributions):
        if rank < r.shape[1] and r[q, rank] >= 0:
          row = int(r[q, rank])
          fused[row] = fused.get(row, 0.0) + float(c[q, rank])
    best = sorted(fused.items(), key=lambda kv: -kv[1])[:topk]  # stable: first seen wins ties
    out_rows[q, :len(best)] = [row for row, _ in best]
    out_scores[q, :len(best)] = [score for _, score in best]
  return out_scores, out_rows


def fuse(params: FusionParams, dense: tuple[np.ndarray, np.ndarray],
         bm25: tuple[np.ndarray, np.ndarray], topk: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores, rows) of the dense and BM25 lists -> fused (scores [n, topk], rows [n, topk])."""
  weights = (params.dense_weight, params.bm25_weight)
  if params.method == "rrf":
    return reciprocal_rank_fusion([dense[1], bm25[1]], weights, params.rrf_k, topk)
  return weighted_score_fusion([dense[0], bm25[0]], [dense[1], bm25[1]], weights, topk)
