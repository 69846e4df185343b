"""BM25 retriever tests: ranking, save/load against the corpus file, refusal of another corpus."""

import pytest

from rag_r1_jax.retrieval import corpus, index as index_lib
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.bm25 import BM25Retriever
from rag_r1_jax.retrieval.docstore import JsonlDocStore

DOCS = [Document("a", "Paris", "Paris is the capital and largest city of France."),
        Document("b", "Berlin", "Berlin is the capital of Germany."),
        Document("c", "Banana", "The banana is an edible fruit."),
        Document("d", "Mango", "Mango is a tropical fruit tree.")]


def test_bm25_ranks_by_term_overlap():
  r = BM25Retriever.from_documents(DOCS)
  out = r.retrieve(["capital of Germany", "tropical fruit", "qqq zzz"], topk=2)
  assert [d.id for d in out[0]] == ["b", "a"]
  assert out[1][0].id == "d" and out[1][1].id == "c"
  assert out[0][0].score > out[0][1].score > 0
  assert [d.score for d in out[2]] == [0.0, 0.0]
  assert len(r.retrieve(["fruit"], topk=10)[0]) == 4
  assert r.stats.calls == 2 and r.stats.queries == 4


def test_bm25_save_load_and_refuse_other_corpus(tmp_path):
  path = str(tmp_path / "c.jsonl")
  corpus.write_corpus(DOCS, path)
  r = BM25Retriever.from_docstore(JsonlDocStore.build(path))
  r.save(str(tmp_path / "bm25"))
  loaded = BM25Retriever.load(str(tmp_path / "bm25"), path)
  q = ["largest city of France", "edible fruit"]
  assert [[(d.id, d.score) for d in x] for x in loaded.retrieve(q, 2)] == \
         [[(d.id, d.score) for d in x] for x in r.retrieve(q, 2)]
  other = str(tmp_path / "other.jsonl")
  corpus.write_corpus(DOCS[:2], other)
  with pytest.raises(ValueError, match="not the corpus"):
    BM25Retriever.load(str(tmp_path / "bm25"), other)
  with pytest.raises(FileNotFoundError, match="meta.json"):
    BM25Retriever.load(str(tmp_path), path)
  assert issubclass(index_lib.IndexMismatchError, ValueError)
