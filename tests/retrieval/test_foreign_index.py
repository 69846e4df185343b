"""Indexes built elsewhere (Search-R1 / FlashRAG layout): load without re-encoding, cached
corpus offsets, clear refusals when the index and corpus disagree; E5/BGE prefixes by name."""

import json
import os

import faiss
import numpy as np
import pytest
from flax import nnx

from rag_r1_jax.retrieval import bert, corpus, docstore, encoder, factory, index as index_lib
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.dense import DenseRetriever


@pytest.fixture(scope="module")
def tiny_encoder(minilm_dir):
  """A 16-dimensional random BERT with MiniLM's tokenizer (no weights to load)."""
  from transformers import AutoTokenizer
  cfg = bert.BertConfig(vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
  return encoder.SentenceEncoder(
      bert.BertModel(cfg, nnx.Rngs(3)), AutoTokenizer.from_pretrained(minilm_dir),
      encoder.EncoderSpec(max_length=32, query_prefix="query: ", passage_prefix="passage: "),
      "e5-tiny", "3" * 64, batch_size=8)


def _docs(n=12):
  return [Document(str(i), f"Title {i}", f"passage {i} about subject {i % 5}") for i in range(n)]


def _flashrag_layout(tmp_path, enc, docs, factory_string="Flat"):
  """Corpus jsonl and `e5_<type>.index` as FlashRAG's index builder writes them."""
  root = tmp_path / "flashrag_index"
  os.makedirs(root, exist_ok=True)
  corpus_path = str(root / "wiki-18.jsonl")
  with open(corpus_path, "w", encoding="utf-8") as f:
    for d in docs:  # FlashRAG's title line: "Title" then the text
      f.write(json.dumps({"id": d.id, "contents": f'"{d.title}"\n{d.text}'}) + "\n")
  emb = enc.encode_passages([d.contents for d in docs])  # [n, 16]
  index = faiss.index_factory(emb.shape[1], factory_string, faiss.METRIC_INNER_PRODUCT)
  index.add(emb)
  index_path = str(root / f"e5_{factory_string}.index")
  faiss.write_index(index, index_path)
  return index_path, corpus_path


def test_flashrag_index_loads_without_reencoding_and_matches_in_memory(tmp_path, tiny_encoder,
                                                                      capsys, monkeypatch):
  docs = _docs()
  index_path, corpus_path = _flashrag_layout(tmp_path, tiny_encoder, docs)
  loaded = DenseRetriever.load(tiny_encoder, index_path, corpus_path)
  assert "has no e5_Flat.index.meta.json" in capsys.readouterr().err
  memory = DenseRetriever.from_documents(tiny_encoder, docs)
  queries = ["subject 3", "Title 7", "passage 11"]
  got, want = loaded.retrieve(queries, 4), memory.retrieve(queries, 4)
  assert [[d.id for d in r] for r in got] == [[d.id for d in r] for r in want]
  np.testing.assert_allclose([[d.score for d in r] for r in got],
                             [[d.score for d in r] for r in want], atol=1e-5)
  by_id = {d.id: d for d in docs}
  assert all((d.title, d.text) == (by_id[d.id].title, by_id[d.id].text) for r in got for d in r)
  # the offsets are cached next to the corpus and reused: a second load scans nothing
  cache = corpus_path + ".offsets.npy"
  assert docstore.offsets_cache_path(corpus_path) == cache
  np.testing.assert_array_equal(np.load(cache), loaded.docs.offsets)
  assert json.load(open(cache + ".json"))["rows"] == 12

  def no_scan(*args, **kwargs):
    raise AssertionError("the corpus was scanned again")
  monkeypatch.setattr(corpus.CorpusScan, "__init__", no_scan)
  again = DenseRetriever.load(tiny_encoder, index_path, corpus_path)
  assert [d.id for d in again.retrieve(queries[:1], 4)[0]] == [d.id for d in got[0]]


def test_through_the_factory_with_hnsw_search_params(tmp_path, tiny_encoder):
  index_path, corpus_path = _flashrag_layout(tmp_path, tiny_encoder, _docs(), "HNSW8")
  cfg = factory.retrieval_config(backend="faiss", index_path=index_path,
                                 corpus_path=corpus_path, index_type="flat", hnsw_ef_search=77)
  retriever = factory.build_retriever(cfg, encoder=tiny_encoder)
  assert index_lib.index_kind(retriever.index) == "hnsw"
  assert faiss.downcast_index(retriever.index).hnsw.efSearch == 77
  assert len(retriever.retrieve(["subject 2"], 3)[0]) == 3


def test_counts_or_dimensions_that_differ_are_refused(tmp_path, tiny_encoder):
  docs = _docs()
  index_path, corpus_path = _flashrag_layout(tmp_path, tiny_encoder, docs)
  DenseRetriever.load(tiny_encoder, index_path, corpus_path)  # caches the offsets
  with open(corpus_path, "a", encoding="utf-8") as f:
    f.write(json.dumps({"id": "x", "contents": '"X"\nextra row'}) + "\n")
  with pytest.raises(index_lib.IndexMismatchError,
                     match=r"holds 12 vectors but corpus .*wiki-18.jsonl has 13 rows; .*"
                           r"retrieval.corpus_path"):
    DenseRetriever.load(tiny_encoder, index_path, corpus_path)
  other = faiss.IndexFlatIP(8)
  other.add(np.zeros((12, 8), np.float32))
  faiss.write_index(other, str(tmp_path / "d8.index"))
  with open(corpus_path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps({"id": d.id, "contents": d.contents}) + "\n")
  with pytest.raises(index_lib.IndexMismatchError,
                     match="8-dimensional vectors but encoder 'e5-tiny' makes 16-dim"):
    DenseRetriever.load(tiny_encoder, str(tmp_path / "d8.index"), corpus_path)
  with open(tmp_path / "junk.index", "wb") as f:
    f.write(b"not an index")
  with pytest.raises(ValueError, match="junk.index is not a FAISS index"):
    DenseRetriever.load(tiny_encoder, str(tmp_path / "junk.index"), corpus_path)


def test_a_bad_corpus_row_is_named_not_skipped(tmp_path, tiny_encoder):
  index_path, corpus_path = _flashrag_layout(tmp_path, tiny_encoder, _docs(3))
  lines = open(corpus_path).read().splitlines()
  lines[1] = '{"id": "1"}'
  with open(corpus_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(corpus.CorpusError, match=r"wiki-18.jsonl:2: missing or empty 'contents'"):
    DenseRetriever.load(tiny_encoder, index_path, corpus_path)


@pytest.mark.parametrize("dirname,config,query_prefix,passage_prefix,pooling", [
    ("e5-base-v2", {}, "query: ", "passage: ", "mean"),
    ("bge-large-en-v1.5", {}, encoder.BGE_QUERY_INSTRUCTION, "", "cls"),
    ("retriever", {"_name_or_path": "intfloat/e5-base-v2"}, "query: ", "passage: ", "mean"),
    ("retriever", {"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}, "", "", "mean"),
])
def test_prefixes_follow_the_encoder_name(tmp_path, dirname, config, query_prefix,
                                          passage_prefix, pooling):
  model_dir = tmp_path / dirname / "model"  # a sentence-transformers package's layout
  os.makedirs(model_dir)
  (model_dir / "config.json").write_text(json.dumps(config))
  spec = encoder.infer_spec(str(model_dir))
  assert (spec.query_prefix, spec.passage_prefix, spec.pooling) == (
      query_prefix, passage_prefix, pooling)
  assert encoder.model_name(str(model_dir)) == dirname
