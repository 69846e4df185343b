"""Rank fusion on hand-computed rankings; the hybrid retriever: one batched call per backend,
the same answers behind the HTTP server."""

import numpy as np
import pytest

from rag_r1_jax.retrieval import factory, fusion
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.bm25 import BM25Retriever
from rag_r1_jax.retrieval.client import RemoteRetriever
from rag_r1_jax.retrieval.hybrid import HybridRetriever
from rag_r1_jax.retrieval.index import IndexMismatchError
from rag_r1_jax.retrieval.server import RetrievalServer

DENSE_ROWS = np.array([[3, 1, 2], [5, 6, -1]])  # [queries, depth], best first
DENSE_SCORES = np.array([[0.9, 0.7, 0.5], [0.8, 0.8, 0.0]])
BM25_ROWS = np.array([[1, 4, -1], [6, 5, -1]])
BM25_SCORES = np.array([[12.0, 4.0, 0.0], [3.0, 1.0, 0.0]])


def test_reciprocal_rank_fusion_by_hand():
  scores, rows = fusion.reciprocal_rank_fusion([DENSE_ROWS, BM25_ROWS], (1.0, 1.0), 60, topk=5)
  # query 0: row 1 = 1/62 + 1/61, row 3 = 1/61, row 4 = 1/62, row 2 = 1/63.
  assert rows[0].tolist() == [1, 3, 4, 2, -1]
  np.testing.assert_allclose(scores[0], [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63, 0.0],
                             rtol=1e-15)
  # query 1: 5 and 6 tie at 1/61 + 1/62; dense's rank 1 (5) is seen first.
  assert rows[1].tolist() == [5, 6, -1, -1, -1]
  np.testing.assert_allclose(scores[1][:2], [1 / 61 + 1 / 62] * 2, rtol=1e-15)
  scores, rows = fusion.reciprocal_rank_fusion([DENSE_ROWS, BM25_ROWS], (2.0, 1.0), 0, topk=2)
  # k=0, dense weighted 2: row 3 = 2/1, row 1 = 2/2 + 1/1, tie -> 3 (seen first); query 1:
  # row 5 = 2/1 + 1/2 = 2.5 beats row 6 = 2/2 + 1/1 = 2.
  assert rows.tolist() == [[3, 1], [5, 6]]
  np.testing.assert_allclose(scores, [[2.0, 2.0], [2.5, 2.0]], rtol=1e-15)


def test_weighted_score_fusion_by_hand():
  norm = fusion.min_max_normalize(BM25_SCORES, BM25_ROWS)
  np.testing.assert_allclose(norm, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  # equal valid scores normalise to 1.
  np.testing.assert_allclose(fusion.min_max_normalize(DENSE_SCORES, DENSE_ROWS)[1], [1, 1, 0])
  scores, rows = fusion.weighted_score_fusion([DENSE_SCORES, BM25_SCORES],
                                              [DENSE_ROWS, BM25_ROWS], (0.3, 0.7), topk=4)
  # query 0: dense 3 -> 1, 1 -> 0.5, 2 -> 0; bm25 1 -> 1, 4 -> 0.
  # row 1 = 0.3 * 0.5 + 0.7 = 0.85, row 3 = 0.3, rows 4 and 2 = 0 (4 seen at rank 2, 2 at 3).
  assert rows[0].tolist() == [1, 3, 4, 2]
  np.testing.assert_allclose(scores[0], [0.85, 0.3, 0.0, 0.0], atol=1e-15)
  # query 1: dense 5, 6 -> 1, 1; bm25 6 -> 1, 5 -> 0: row 6 = 1.0, row 5 = 0.3.
  assert rows[1].tolist() == [6, 5, -1, -1]
  np.testing.assert_allclose(scores[1], [1.0, 0.3, 0.0, 0.0], atol=1e-15)


def test_fuse_dispatches_on_params_and_params_are_checked():
  dense, bm25 = (DENSE_SCORES, DENSE_ROWS), (BM25_SCORES, BM25_ROWS)
  rrf = fusion.fuse(fusion.FusionParams(method="rrf", rrf_k=60), dense, bm25, 3)
  np.testing.assert_array_equal(rrf[1], [[1, 3, 4], [5, 6, -1]])
  weighted = fusion.fuse(fusion.FusionParams(method="weighted", dense_weight=0.3,
                                             bm25_weight=0.7), dense, bm25, 2)
  np.testing.assert_array_equal(weighted[1], [[1, 3], [6, 5]])
  with pytest.raises(ValueError, match="fusion method must be one of"):
    fusion.FusionParams(method="max")
  with pytest.raises(ValueError, match="positive sum"):
    fusion.FusionParams(dense_weight=0.0, bm25_weight=0.0)
  with pytest.raises(ValueError, match="depth"):
    fusion.FusionParams(depth=0)


DOCS = [Document("p", "Paris", "Paris is the capital of France."),
        Document("b", "Berlin", "Berlin is the capital of Germany."),
        Document("f", "Banana", "A banana is an elongated edible fruit."),
        Document("m", "Mango", "Mango is a tropical fruit tree.")]


def test_hybrid_retriever_one_batched_call_each_and_fused_rows(minilm_dir, monkeypatch):
  cfg = factory.retrieval_config(backend="hybrid", encoder_path="asset:minilm_dir",
                                 fusion_depth=4)
  hybrid = factory.build_retriever(cfg, documents=DOCS)
  assert isinstance(hybrid, HybridRetriever) and hybrid.bm25.docs is hybrid.dense.docs
  calls = []
  for name in ("dense", "bm25"):
    backend = getattr(hybrid, name)
    original = backend.search_rows
    monkeypatch.setattr(backend, "search_rows",
                        lambda q, k, o=original, n=name: calls.append((n, len(q), k)) or o(q, k))
  queries = ["capital of Germany", "tropical fruit", "qqq zzz"]
  out = hybrid.retrieve(queries, topk=2)
  assert calls == [("dense", 3, 4), ("bm25", 3, 4)]
  assert hybrid.stats.calls == 1 and hybrid.stats.queries == 3
  dense_scores, dense_rows = hybrid.dense.search_rows(queries, 4)
  bm25_scores, bm25_rows = hybrid.bm25.search_rows(queries, 4)
  bm25_rows = np.where(bm25_scores > 0, bm25_rows, -1)
  want_scores, want_rows = fusion.reciprocal_rank_fusion([dense_rows, bm25_rows], (1.0, 1.0),
                                                         60.0, 2)
  assert [[d.id for d in r] for r in out] == [[DOCS[i].id for i in row] for row in want_rows]
  np.testing.assert_allclose([[d.score for d in r] for r in out], want_scores)
  assert out[0][0].id == "b" and out[1][0].id == "m"
  # no BM25 term matches "qqq zzz": its zero-score rows are dropped, dense ranks alone count.
  assert [d.score for d in out[2]] == pytest.approx([1 / 61, 1 / 62])
  assert [d.id for d in out[2]] == [DOCS[i].id for i in dense_rows[2][:2]]


def test_hybrid_refuses_indexes_of_different_corpora(minilm_dir):
  dense = factory.build_retriever(factory.retrieval_config(
      backend="faiss", encoder_path=minilm_dir), documents=DOCS)
  with pytest.raises(IndexMismatchError, match="different corpora"):
    HybridRetriever(dense, BM25Retriever.from_documents(DOCS[:3]), fusion.FusionParams())


def test_hybrid_behind_the_server_answers_as_it_does_in_process(minilm_dir):
  hybrid = factory.build_retriever(factory.retrieval_config(
      backend="hybrid", encoder_path=minilm_dir, fusion="weighted"), documents=DOCS)
  queries = ["capital of Germany", "tropical fruit"]
  want = hybrid.retrieve(queries, 3)
  with RetrievalServer(hybrid, num_documents=len(hybrid.docs)) as server:
    got = RemoteRetriever(server.url, timeout_s=30, max_retries=0).retrieve(queries, 3)
  assert [[(d.id, d.title, d.text) for d in row] for row in got] == \
         [[(d.id, d.title, d.text) for d in row] for row in want]
  assert [[d.score for d in row] for row in got] == \
         [[pytest.approx(d.score, abs=1e-9) for d in row] for row in want]
  assert want[0][0].id == "b" and want[0][0].score == pytest.approx(2.0)  # top of both lists
