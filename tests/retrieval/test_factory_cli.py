"""build_retriever from config.retrieval, and the build/serve/query/wiki-corpus commands."""

import json
import os
import subprocess
import sys

import pytest

from configs.common import base_config
from rag_r1_jax.retrieval import __main__ as cli
from rag_r1_jax.retrieval import corpus, factory
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.bm25 import BM25Retriever
from rag_r1_jax.retrieval.client import RemoteRetriever
from rag_r1_jax.retrieval.dense import DenseRetriever

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [Document("p", "Paris", "Paris is the capital of France."),
        Document("b", "Berlin", "Berlin is the capital of Germany."),
        Document("f", "Banana", "A banana is an elongated edible fruit.")]


def _cfg(**fields):
  cfg = base_config().retrieval
  for k, v in fields.items():
    cfg[k] = v
  return cfg


def test_factory_backends_and_field_errors(tmp_path, minilm_dir):
  remote = factory.build_retriever(_cfg(backend="server", server_url="http://127.0.0.1:9/",
                                        timeout_s=1.5, max_retries=5))
  assert isinstance(remote, RemoteRetriever)
  assert (remote.url, remote.timeout_s, remote.max_retries) == (
      "http://127.0.0.1:9/retrieve", 1.5, 5)
  with pytest.raises(ValueError, match="retrieval.server_url is empty"):
    factory.build_retriever(_cfg(backend="server"))
  with pytest.raises(ValueError, match="retrieval.backend must be one of"):
    factory.build_retriever(_cfg(backend="elastic"))
  with pytest.raises(ValueError, match="retrieval.encoder_path is empty"):
    factory.build_retriever(_cfg(backend="faiss"), documents=DOCS)
  with pytest.raises(ValueError, match="retrieval.corpus_path"):
    factory.build_retriever(_cfg(backend="bm25"))
  bm25 = factory.build_retriever(_cfg(backend="bm25"), documents=DOCS)
  assert isinstance(bm25, BM25Retriever) and bm25.retrieve(["edible fruit"], 1)[0][0].id == "f"
  path = str(tmp_path / "c.jsonl")
  corpus.write_corpus(DOCS, path)
  bm25_file = factory.build_retriever(_cfg(backend="bm25", corpus_path=path))
  assert bm25_file.retrieve(["capital of Germany"], 1)[0][0].id == "b"
  dense = factory.build_retriever(_cfg(backend="faiss", encoder_path=minilm_dir), documents=DOCS)
  assert isinstance(dense, DenseRetriever) and dense.encoder.spec.pooling == "mean"
  assert [d.id for d in dense.retrieve(["German capital city"], 2)[0]] == ["b", "p"]
  assert dense.retrieve(["yellow fruit"], 1)[0][0].id == "f"
  with pytest.raises(ValueError, match="retrieval.index_path must name an index"):
    factory.build_retriever(_cfg(backend="faiss", encoder_path=minilm_dir, corpus_path=path))


def test_cli_wiki_corpus_build_and_query(tmp_path, minilm_dir, capsys):
  wiki = tmp_path / "wiki.json"
  words = " ".join(f"w{i}" for i in range(150))
  wiki.write_text(json.dumps({
      "Hamlet": {"title": "Hamlet", "extract": "Hamlet is a tragedy by William Shakespeare. "
                 + words, "description": "Play", "topic": "Arts"},
      "Banana": {"title": "Banana", "extract": "A banana is an edible fruit.",
                 "description": "Fruit", "topic": "Biology"}}))
  out = str(tmp_path / "wiki.jsonl")
  cli.main(["wiki-corpus", "--out", out, "--wiki_path", str(wiki), "--words", "100"])
  docs = list(corpus.read_corpus(out))
  assert [(d.id, d.title, len(d.text.split())) for d in docs] == [
      ("0", "Hamlet", 100), ("1", "Hamlet", 57), ("2", "Banana", 6)]
  index = str(tmp_path / "wiki.faiss")
  cli.main(["build", "--corpus", out, "--encoder", minilm_dir, "--index", index,
            "--max_length", "64"])
  assert os.path.isfile(index + ".meta.json") and os.path.isfile(index + ".docs.npy")
  capsys.readouterr()
  cli.main(["query", "--corpus", out, "--encoder", minilm_dir, "--index", index,
            "--max_length", "64", "--topk", "1", "who wrote the tragedy Hamlet", "edible fruit"])
  printed = capsys.readouterr().out
  assert "1. [" in printed and "(0) Hamlet: Hamlet is a tragedy" in printed
  assert "(2) Banana: A banana is an edible fruit." in printed
  with pytest.raises(Exception, match="index_type is 'hnsw'"):
    cli.main(["query", "--corpus", out, "--encoder", minilm_dir, "--index", index,
              "--max_length", "64", "--index_type", "hnsw", "x"])


def test_cli_serve_subprocess_and_query_by_url(tmp_path, capsys):
  path = str(tmp_path / "c.jsonl")
  corpus.write_corpus(DOCS, path)
  cli.main(["build", "--backend", "bm25", "--corpus", path, "--index", str(tmp_path / "bm25")])
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen([sys.executable, "-m", "rag_r1_jax.retrieval", "serve", "--backend",
                           "bm25", "--corpus", path, "--index", str(tmp_path / "bm25"),
                           "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=REPO)
  try:
    line = proc.stdout.readline()
    assert line.startswith("serving 3 passages at http://127.0.0.1:"), (line, proc.poll())
    url = line.split(" at ")[1].strip()
    capsys.readouterr()
    cli.main(["query", "--url", url, "--topk", "2", "capital of France"])
    printed = capsys.readouterr().out
    assert "1. [" in printed and "(p) Paris: Paris is the capital of France." in printed
    assert '"calls": 1' in printed
  finally:
    proc.terminate()
    proc.wait(timeout=10)
