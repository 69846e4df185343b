"""FAISS index tests: exact flat search, fp16/HNSW/IVF-PQ recall floors, save/load checks."""

import dataclasses

import faiss
import numpy as np
import pytest

from rag_r1_jax.retrieval import index as index_lib


def _unit_rows(rng, n, d):
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(corpus, queries, k):
  """Reference: full inner products and a stable descending sort."""
  scores = queries @ corpus.T  # [q, n]
  rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, rows, axis=1), rows


def recall_at(rows, ref_rows, k):
  """Mean fraction of the reference top-k found in the approximate top-k."""
  return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows, ref_rows)]))


def _build(vectors, **kw):
  return index_lib.build_index([vectors], len(vectors), index_lib.IndexParams(**kw),
                               progress=False)


def test_flat_search_is_numpys_topk():
  rng = np.random.default_rng(0)
  corpus, queries = _unit_rows(rng, 3000, 64), _unit_rows(rng, 300, 64)
  # chunks are added in order, so row ids are global positions
  index = index_lib.build_index(np.array_split(corpus, 7), 3000, index_lib.IndexParams(),
                                progress=False)
  scores, rows = index_lib.search(index, queries, 10)
  want_scores, want_rows = numpy_topk(corpus, queries, 10)
  np.testing.assert_array_equal(rows, want_rows)
  np.testing.assert_allclose(scores, want_scores, atol=1e-5)
  assert faiss.cvar.distance_compute_blas_threshold == index_lib.BLAS_THRESHOLD
  empty_scores, empty_rows = index_lib.search(index, queries[:0], 3)
  assert empty_scores.shape == (0, 3) and empty_rows.shape == (0, 3)


# Floors for the real corpus below (1,004 MiniLM wiki passages, the subset's descriptions as
# queries). Measured: fp16 1.000, HNSW(M=32, efSearch=128) 1.000, IVF-PQ(nlist=25,
# 48 sub-quantizers x 8 bits, nprobe=16) 0.821.
FP16_FLOOR, HNSW_FLOOR, IVFPQ_FLOOR = 0.99, 0.98, 0.70


def test_approximate_indexes_recall_on_real_corpus(wiki_passage_embeddings, wiki_query_embeddings):
  corpus, queries = wiki_passage_embeddings, wiki_query_embeddings
  _, flat_rows = index_lib.search(_build(corpus), queries, 10)
  recalls = {}
  for name, kw in {"fp16": {"fp16": True}, "hnsw": {"index_type": "hnsw"},
                   "ivfpq": {"index_type": "ivfpq"}}.items():
    index = _build(corpus, **kw)
    recalls[name] = recall_at(index_lib.search(index, queries, 10)[1], flat_rows, 10)
  print(f"recall@10 vs flat on {len(corpus)} wiki passages: {recalls}")
  assert recalls["fp16"] >= FP16_FLOOR, recalls
  assert recalls["hnsw"] >= HNSW_FLOOR, recalls
  assert recalls["ivfpq"] >= IVFPQ_FLOOR, recalls


def test_memory_fp16_and_ivfpq_are_smaller():
  corpus = _unit_rows(np.random.default_rng(1), 4000, 128)
  flat = index_lib.index_bytes(_build(corpus))
  fp16 = index_lib.index_bytes(_build(corpus, fp16=True))
  ivfpq = index_lib.index_bytes(_build(corpus, index_type="ivfpq"))
  assert 4000 * 128 * 4 <= flat < 4000 * 128 * 4 * 1.01
  assert 0.49 < fp16 / flat < 0.52
  assert ivfpq < flat / 6  # 16 bytes of codes + 8 of id per vector, plus centroids


def _meta(index, **changes):
  meta = index_lib.IndexMeta(encoder_name="enc", encoder_hash="e" * 16, dim=index.d,
                             corpus_hash="c" * 64, index_type="flat", count=index.ntotal)
  return dataclasses.replace(meta, **changes)


def test_save_load_round_trip_and_refusals(tmp_path):
  rng = np.random.default_rng(2)
  corpus, queries = _unit_rows(rng, 500, 32), _unit_rows(rng, 20, 32)
  index = _build(corpus, index_type="hnsw")
  path = str(tmp_path / "idx" / "wiki.faiss")
  index_lib.save_index(index, _meta(index, index_type="hnsw"), path)
  loaded, meta = index_lib.load_index(path, encoder_hash="e" * 16, corpus_hash="c" * 64)
  assert (meta.count, meta.dim, meta.index_type) == (500, 32, "hnsw")
  index_lib.set_search_params(loaded, index_lib.IndexParams(index_type="hnsw"))
  np.testing.assert_array_equal(index_lib.search(loaded, queries, 5)[1],
                                index_lib.search(index, queries, 5)[1])
  with pytest.raises(index_lib.IndexMismatchError, match="built with encoder 'enc'"):
    index_lib.load_index(path, encoder_hash="f" * 16, corpus_hash="c" * 64)
  with pytest.raises(index_lib.IndexMismatchError, match="rebuild the index or point "
                     "retrieval.corpus_path"):
    index_lib.load_index(path, encoder_hash="e" * 16, corpus_hash="d" * 64)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    index_lib.load_index(str(tmp_path / "nope.faiss"))
  with pytest.raises(ValueError, match="metadata count"):
    index_lib.save_index(index, _meta(index, count=7), path)


def test_index_params_validation():
  with pytest.raises(ValueError, match="index_type"):
    index_lib.IndexParams(index_type="lsh")
  with pytest.raises(ValueError, match="fp16"):
    index_lib.IndexParams(index_type="hnsw", fp16=True)
  with pytest.raises(ValueError, match="zero vectors"):
    index_lib.build_index([], 0, index_lib.IndexParams(), progress=False)


def _import_in_subprocess(module: str, **env) -> tuple[str, str]:
  """(stdout, stderr) of a fresh interpreter that imports `module` with libgomp's settings
  displayed (OMP_DISPLAY_ENV) and prints whether OMP_WAIT_POLICY is in its environment after."""
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  child_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
  child_env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=repo, **env)
  code = f"import os, {module}; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
  proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True,
                        text=True, timeout=120, check=True)
  return proc.stdout.strip(), proc.stderr


def test_faiss_openmp_waits_passively_without_changing_the_environment():
  # dense.py is what the rollout imports first; faiss's libgomp must start with spin count 0.
  out, err = _import_in_subprocess("rag_r1_jax.retrieval.dense")
  assert "GOMP_SPINCOUNT = '0'" in err and out == "unset"
  out, err = _import_in_subprocess("rag_r1_jax.retrieval.index", OMP_WAIT_POLICY="ACTIVE")
  assert "OMP_WAIT_POLICY = 'ACTIVE'" in err and out == "ACTIVE"  # the user's choice wins
