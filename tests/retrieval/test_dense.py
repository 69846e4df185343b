"""Dense retriever tests: build from a corpus file, load, refuse mismatches, search results."""

import numpy as np
import pytest
from flax import nnx

from rag_r1_jax.retrieval import bert, corpus, encoder, index as index_lib
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.dense import DenseRetriever, build_dense_index


def _tiny(minilm, seed=1, max_length=32) -> encoder.SentenceEncoder:
  cfg = bert.BertConfig(vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
  return encoder.SentenceEncoder(bert.BertModel(cfg, nnx.Rngs(seed)), minilm.tokenizer,
                                 encoder.EncoderSpec(max_length=max_length), f"tiny{seed}",
                                 str(seed) * 64, batch_size=8)


def _docs(n=40):
  return [Document(str(100 + i), f"Topic {i}", f"passage {i} about subject {i % 7}")
          for i in range(n)]


def test_build_load_and_retrieve_matches_in_memory(tmp_path, minilm):
  enc = _tiny(minilm)
  docs = _docs()
  path = str(tmp_path / "corpus.jsonl")
  corpus.write_corpus(docs, path)
  index_path = str(tmp_path / "out" / "flat.faiss")
  meta = build_dense_index(enc, path, index_path, progress=False)
  assert (meta.count, meta.dim, meta.index_type, meta.encoder_hash) == (40, 16, "flat", enc.hash)
  loaded = DenseRetriever.load(enc, index_path, path)
  memory = DenseRetriever.from_documents(enc, docs)
  queries = ["passage 3 about subject 3", "topic 17", "nothing"]
  got, want = loaded.retrieve(queries, 5), memory.retrieve(queries, 5)
  assert [[d.id for d in r] for r in got] == [[d.id for d in r] for r in want]
  for row, wrow in zip(got, want):
    np.testing.assert_allclose([d.score for d in row], [d.score for d in wrow], atol=1e-5)
    assert all(a.score >= b.score for a, b in zip(row, row[1:]))
  by_id = {d.id: d for d in docs}
  assert all(d.contents == by_id[d.id].contents for row in got for d in row)
  # the top hit is the exact inner product of the query with that passage
  q = enc.encode_queries(queries[:1])[0]
  p = enc.encode_passages([by_id[got[0][0].id].contents])[0]
  assert got[0][0].score == pytest.approx(float(q @ p), abs=1e-5)
  assert loaded.stats.calls == 1 and loaded.stats.queries == 3


def test_load_refuses_other_encoder_or_corpus(tmp_path, minilm):
  enc = _tiny(minilm)
  path = str(tmp_path / "corpus.jsonl")
  corpus.write_corpus(_docs(), path)
  index_path = str(tmp_path / "flat.faiss")
  build_dense_index(enc, path, index_path, progress=False)
  with pytest.raises(index_lib.IndexMismatchError, match="built with encoder 'tiny1'"):
    DenseRetriever.load(_tiny(minilm, seed=2), index_path, path)
  with pytest.raises(index_lib.IndexMismatchError, match=r"settings differ \(index, now\): "
                     r"\{'max_length': \(32, 48\)\}"):
    DenseRetriever.load(_tiny(minilm, max_length=48), index_path, path)
  with pytest.raises(ValueError, match="index_type is 'hnsw'"):
    DenseRetriever.load(enc, index_path, path, index_lib.IndexParams(index_type="hnsw"))
  raw = open(path, "rb").read()
  with open(path, "wb") as f:  # same size, different text: caught by the content hash
    f.write(raw.replace(b"subject 3", b"subject 4"))
  with pytest.raises(ValueError, match="changed since"):
    DenseRetriever.load(enc, index_path, path)
  with pytest.raises(FileNotFoundError, match="retrieval.index_path"):
    DenseRetriever.load(enc, str(tmp_path / "missing.faiss"), path)


def test_build_reports_bad_rows(tmp_path, minilm):
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"id": "1", "contents": "\\"A\\"\\nok"}\n{"id": "2"}\n')
  with pytest.raises(corpus.CorpusError, match=r"corpus.jsonl:2: missing or empty 'contents'"):
    build_dense_index(_tiny(minilm), str(path), str(tmp_path / "i.faiss"), progress=False)
  report = tmp_path / "bad.txt"
  meta = build_dense_index(_tiny(minilm), str(path), str(tmp_path / "i.faiss"),
                           bad_rows_report=str(report), progress=False)
  assert meta.count == 1 and "corpus.jsonl:2:" in report.read_text()
