"""corpus_docstore: the offsets cache of a corpus is built once, even by processes that start
together, and read by the others."""

import json
import multiprocessing
import os
import time

import numpy as np

from rag_r1_jax.retrieval import docstore


def _write_corpus(path, rows):
  with open(path, "w") as f:
    for i in range(rows):
      f.write(json.dumps({"id": str(i), "contents": f'"Title {i}"\npassage {i}'}) + "\n")


def _open_store(corpus_path, builds_log, out_path):
  real_build = docstore.JsonlDocStore.build.__func__

  def logged_build(cls, path):
    with open(builds_log, "a") as f:
      f.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # the others arrive while this process is still building
    return real_build(cls, path)

  docstore.JsonlDocStore.build = classmethod(logged_build)
  store = docstore.corpus_docstore(corpus_path)
  np.save(out_path, store.offsets)


def test_processes_starting_together_build_the_offsets_once(tmp_path):
  corpus_path, log = str(tmp_path / "corpus.jsonl"), str(tmp_path / "builds.log")
  _write_corpus(corpus_path, 50)
  ctx = multiprocessing.get_context("spawn")
  procs = [ctx.Process(target=_open_store, args=(corpus_path, log, str(tmp_path / f"o{i}.npy")))
           for i in range(3)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(timeout=120)
    assert p.exitcode == 0
  with open(log) as f:
    assert len(f.read().split()) == 1  # one process scanned the corpus
  offsets = [np.load(tmp_path / f"o{i}.npy") for i in range(3)]
  assert all(len(o) == 50 and np.array_equal(o, offsets[0]) for o in offsets)
  assert np.array_equal(np.load(docstore.offsets_cache_path(corpus_path)), offsets[0])


def test_a_stale_cache_is_rebuilt_under_the_lock(tmp_path, capsys):
  corpus_path = str(tmp_path / "corpus.jsonl")
  _write_corpus(corpus_path, 5)
  assert len(docstore.corpus_docstore(corpus_path)) == 5
  assert "indexing the rows of" in capsys.readouterr().err
  _write_corpus(corpus_path, 7)  # the corpus changed under its cache
  assert len(docstore.corpus_docstore(corpus_path)) == 7
  assert "rebuilding the offsets" in capsys.readouterr().err
