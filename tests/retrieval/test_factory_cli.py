"""build_retriever from config.retrieval, and the build/serve/query/wiki-corpus commands."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from configs.common import base_config
from rag_r1_jax import config_validation
from rag_r1_jax.retrieval import __main__ as cli
from rag_r1_jax.retrieval import corpus, factory, fusion
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


WIKI_JSON = {
    "Hamlet": {"title": "Hamlet", "extract": "Hamlet is a tragedy by William Shakespeare. "
               + " ".join(f"w{i}" for i in range(150)), "description": "Play",
               "topic": "Arts"},
    "Banana": {"title": "Banana", "extract": "A banana is an edible fruit.",
               "description": "Fruit", "topic": "Biology"}}
QUESTIONS = [
    {"id": "q1", "question": "who wrote the tragedy Hamlet", "gold_ids": ["0"],
     "golden_answers": ["William Shakespeare"]},
    {"id": "q2", "question": "edible fruit", "gold_ids": ["2"], "golden_answers": ["banana"]},
    {"id": "q3", "question": "w120 w121 w122", "gold_ids": ["1"]},
    {"id": "q4", "question": "edible fruit", "gold_ids": ["0"]}]


def _run(capsys, *argv) -> tuple[str, str]:
  capsys.readouterr()
  cli.main(list(argv))
  out = capsys.readouterr()
  return out.out, out.err


def _fails(capsys, *argv) -> tuple[int, str]:
  """(exit status, stderr) of a command line the CLI refuses."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def wiki_files(tmp_path_factory, minilm_dir):
  """A 3-passage corpus from wiki-corpus, its FAISS and BM25 indexes (one hybrid build, the
  encoder given as asset:minilm_dir) and a question file."""
  tmp = tmp_path_factory.mktemp("cli")
  wiki = tmp / "wiki.json"
  wiki.write_text(json.dumps(WIKI_JSON))
  files = {"corpus": str(tmp / "wiki.jsonl"), "faiss": str(tmp / "wiki.faiss"),
           "bm25": str(tmp / "wiki.bm25"), "questions": str(tmp / "q.jsonl"),
           "wiki": str(wiki)}
  cli.main(["wiki-corpus", "--out", files["corpus"], "--wiki_path", str(wiki), "--words", "100"])
  cli.main(["build", "--backend", "hybrid", "--corpus", files["corpus"], "--encoder",
            "asset:minilm_dir", "--index", files["faiss"], "--bm25_index", files["bm25"],
            "--max_length", "64"])
  with open(files["questions"], "w") as f:
    f.writelines(json.dumps(q) + "\n" for q in QUESTIONS)
  return files


def _hybrid_args(files) -> list[str]:
  return ["--backend", "hybrid", "--corpus", files["corpus"], "--encoder", "asset:minilm_dir",
          "--index", files["faiss"], "--bm25_index", files["bm25"], "--max_length", "64"]


def test_cli_wiki_corpus_and_hybrid_build(wiki_files):
  docs = list(corpus.read_corpus(wiki_files["corpus"]))
  assert [(d.id, d.title, len(d.text.split())) for d in docs] == [
      ("0", "Hamlet", 100), ("1", "Hamlet", 57), ("2", "Banana", 6)]
  assert os.path.isfile(wiki_files["faiss"] + ".meta.json")
  assert os.path.isfile(wiki_files["faiss"] + ".docs.npy")
  assert os.path.isfile(os.path.join(wiki_files["bm25"], "meta.json"))


def test_cli_query_prints_whole_passages_and_refuses_a_wrong_index_type(wiki_files, capsys):
  args = ["query", "--corpus", wiki_files["corpus"], "--encoder", "asset:minilm_dir",
          "--index", wiki_files["faiss"], "--max_length", "64", "--topk", "1"]
  out, _ = _run(capsys, *args, "who wrote the tragedy Hamlet", "edible fruit")
  assert "1. [" in out and "(2) Banana: A banana is an edible fruit." in out
  hamlet = next(line for line in out.splitlines() if "(0) Hamlet:" in line)
  assert hamlet.endswith("w92")  # the whole 100-word passage, not cut at 200 characters
  assert '"calls": 1' in out
  code, err = _fails(capsys, *args, "--index_type", "hnsw", "x")
  assert code == 1 and "query: error: retrieval.index_type is 'hnsw'" in err


def test_cli_query_questions_file_to_jsonl_in_one_call(wiki_files, tmp_path, capsys):
  hits_path = str(tmp_path / "hits.jsonl")
  out, _ = _run(capsys, "query", *_hybrid_args(wiki_files), "--questions",
                wiki_files["questions"], "--output", hits_path, "--topk", "2")
  assert f"4 queries, 8 hits written to {hits_path}" in out
  assert '"calls": 1, "queries": 4' in out  # one batched call, one encoder load
  rows = [json.loads(line) for line in open(hits_path)]
  assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
  assert [h["id"] for h in rows[2]["hits"]][0] == "1"
  first = rows[0]["hits"][0]
  assert first["id"] == "0" and first["title"] == "Hamlet" and first["text"].endswith("w92")
  assert first["score"] > rows[0]["hits"][1]["score"] > 0


def test_cli_evaluate_recall_against_gold_ids_and_answers(wiki_files, capsys):
  out, _ = _run(capsys, "evaluate", *_hybrid_args(wiki_files), "--questions",
                wiki_files["questions"], "--ks", "1,3")
  assert "4 questions (4 with gold ids, 2 with answers), backend hybrid" in out
  recall = json.loads(out.strip().splitlines()[-1])
  # q4's gold (passage 0) is not the best passage for "edible fruit"; all 3 passages at k=3.
  assert recall == {"gold_recall@1": 0.75, "answer_recall@1": 1.0, "gold_recall@3": 1.0,
                    "answer_recall@3": 1.0}
  bm25_out, _ = _run(capsys, "evaluate", "--backend", "bm25", "--corpus", wiki_files["corpus"],
                     "--index", wiki_files["bm25"], "--questions", wiki_files["questions"],
                     "--ks", "1")
  assert json.loads(bm25_out.strip().splitlines()[-1])["gold_recall@1"] == 0.75


def test_cli_wiki_questions_gold_ids_are_wiki_corpus_passages(wiki_files, tmp_path, capsys):
  path = str(tmp_path / "wq.jsonl")
  out, _ = _run(capsys, "wiki-questions", "--out", path, "--wiki_path", wiki_files["wiki"],
                "--words", "100")
  assert out.startswith(f"2 questions over 2 articles written to {path}")
  rows = [json.loads(line) for line in open(path)]
  assert rows == [
      {"id": "wiki-0", "question": "Play", "gold_ids": ["0", "1"], "golden_answers": ["Hamlet"]},
      {"id": "wiki-1", "question": "Fruit", "gold_ids": ["2"], "golden_answers": ["Banana"]}]


def test_cli_error_messages_name_the_flag(wiki_files, tmp_path, capsys):
  code, err = _fails(capsys, "build", "--corpus", wiki_files["corpus"], "--index",
                     str(tmp_path / "x.faiss"))
  assert code == 2 and "--encoder is required with --backend faiss" in err
  assert "asset:minilm_dir" in err and "retrieval.encoder_path" not in err
  code, err = _fails(capsys, "query", "--backend", "hybrid", "--corpus", wiki_files["corpus"],
                     "--index", wiki_files["faiss"], "x")
  assert code == 2 and "--encoder is required with --backend hybrid" in err
  code, err = _fails(capsys, "build", "--backend", "hybrid", "--corpus", wiki_files["corpus"],
                     "--encoder", "asset:minilm_dir", "--index", str(tmp_path / "y.faiss"))
  assert code == 2 and "--bm25_index is missing" in err
  code, err = _fails(capsys, "query", "--url", "http://127.0.0.1:9")
  assert code == 2 and "query needs queries as arguments or --questions FILE" in err
  code, err = _fails(capsys, "query", "--url", "http://127.0.0.1:9", "--questions",
                     wiki_files["questions"], "also a query")
  assert code == 2 and "not both" in err
  code, err = _fails(capsys, "query", "--url", "http://127.0.0.1:9", "--questions",
                     str(tmp_path / "none.jsonl"))
  assert code == 2 and "none.jsonl does not exist" in err
  code, err = _fails(capsys, "query", "--corpus", wiki_files["corpus"], "x")
  assert code == 2 and "query needs --url, or --corpus and --index" in err
  code, err = _fails(capsys, "evaluate", "--url", "http://127.0.0.1:9")
  assert code == 2 and "evaluate needs --questions FILE" in err
  code, err = _fails(capsys, "evaluate", "--url", "http://127.0.0.1:9", "--questions",
                     wiki_files["questions"], "--ks", "1,x")
  assert code == 2 and "--ks must be comma-separated integers, got '1,x'" in err
  bare = tmp_path / "bare.jsonl"
  bare.write_text(json.dumps({"question": "q"}) + "\n")
  code, err = _fails(capsys, "evaluate", "--url", "http://127.0.0.1:9", "--questions", str(bare))
  assert code == 2 and "no 'gold_ids' or 'golden_answers'" in err
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"question": "q"}) + "\n" + json.dumps({"query": "q"}) + "\n")
  code, err = _fails(capsys, "evaluate", "--url", "http://127.0.0.1:9", "--questions", str(bad))
  assert code == 1 and f"{bad}:2: each row must be an object with a string 'question'" in err
  code, err = _fails(capsys, "query", "--encoder", "asset:no_such_asset", "--corpus",
                     wiki_files["corpus"], "--index", wiki_files["faiss"], "x")
  assert code == 2 and "--encoder asset:no_such_asset: no such asset; the assets are " in err
  assert "asset:minilm_dir" in err


def test_cli_help_has_examples_and_every_flag_explained(capsys):
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0
  for command in ("build", "serve", "query", "evaluate", "wiki-corpus", "wiki-questions",
                  "chunk"):
    assert command in out
  assert "--encoder asset:minilm_dir" in out and "--questions questions.jsonl" in out
  top = cli.parser()
  subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
  undocumented = [(name, a.dest) for name, p in subparsers.choices.items() for a in p._actions
                  if not a.help or a.help == argparse.SUPPRESS]
  assert undocumented == []
  assert set(cli.LOCAL_BACKENDS) == set(factory.BACKENDS) - {"server"}


def test_factory_hybrid_asset_paths_and_config_checks(minilm_dir):
  with pytest.raises(ValueError, match="retrieval has no field 'encoder'"):
    factory.retrieval_config(encoder="asset:minilm_dir")
  cfg = factory.retrieval_config(backend="hybrid", encoder_path="asset:minilm_dir",
                                 corpus_path="c.jsonl")
  with pytest.raises(ValueError, match="backend is 'hybrid' without in-memory documents, so "
                     "retrieval.index_path must name an index"):
    factory.build_retriever(cfg)
  assert factory.fusion_params_from_config(cfg) == fusion.FusionParams()
  config = base_config()
  config.rollout.max_total_length = config.model.max_position_embeddings
  config_validation.validate(config)
  config.retrieval.backend = "hybrid"
  config.retrieval.fusion = "max"
  config.retrieval.fusion_dense_weight = 0.0
  config.retrieval.fusion_bm25_weight = 0.0
  config.retrieval.encode_seq_bucket = 0
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(config)
  assert "config.retrieval.fusion='max': must be one of rrf, weighted" in str(e.value)
  assert "config.retrieval.fusion_bm25_weight=0.0: and config.retrieval.fusion_dense_weight " \
         "must not both be 0" in str(e.value)
  assert "config.retrieval.encode_seq_bucket=0: must be positive" in str(e.value)
  config.retrieval.backend = "elastic"
  with pytest.raises(config_validation.ConfigError, match="backend='elastic': must be one of "
                     "faiss, bm25, hybrid, server"):
    config_validation.validate(config)


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
