"""Tests for the corpus reader, bad-row reports, chunker, doc stores and the wiki extracts."""

import json

import numpy as np
import pytest

from rag_r1_jax.retrieval import corpus
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.docstore import JsonlDocStore, ListDocStore
from tests.conftest import require_asset


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


GOOD = [json.dumps({"id": "a", "contents": '"Alpha"\nFirst letter.'}),
        json.dumps({"id": 2, "contents": '"Beta"\nSecond letter, with "quotes".'}),
        json.dumps({"id": "c", "contents": '"Gamma"\nThird.'})]


def test_read_corpus_parses_titles_and_ids(tmp_path):
  path = _write(tmp_path / "c.jsonl", GOOD[:2] + [""] + GOOD[2:])  # blank line is skipped
  docs = list(corpus.read_corpus(path))
  assert [d.id for d in docs] == ["a", "2", "c"]
  assert docs[1].title == "Beta" and docs[1].text == 'Second letter, with "quotes".'
  assert docs[0].contents == '"Alpha"\nFirst letter.'


def test_lone_surrogates_in_a_corpus_become_replacement_characters(tmp_path):
  row = '{"id": "x\\ud800", "contents": "\\"T\\udc00\\"\\nbad \\ud83d!"}'  # JSON escapes
  path = _write(tmp_path / "c.jsonl", [row])
  [doc] = corpus.read_corpus(path)
  assert (doc.id, doc.title, doc.text) == ("x\ufffd", "T\ufffd", "bad \ufffd!")
  doc.contents.encode("utf-8")


def test_bad_rows_are_raised_with_file_and_line(tmp_path):
  lines = [GOOD[0], "{not json", json.dumps({"contents": "x"}), json.dumps({"id": "z",
           "contents": "  "}), json.dumps([1, 2]), GOOD[1]]
  path = _write(tmp_path / "bad.jsonl", lines)
  with pytest.raises(corpus.CorpusError) as err:
    list(corpus.read_corpus(path))
  lines_reported = [(b.line, b.reason.split(" (")[0]) for b in err.value.bad_rows]
  assert lines_reported == [(2, "bad JSON"), (3, "missing or empty 'id'"),
                            (4, "missing or empty 'contents'"),
                            (5, "expected a JSON object, got list")]
  assert f"{path}:2: bad JSON" in str(err.value)
  assert "4 bad corpus row(s)" in str(err.value)


def test_bad_rows_report_keeps_good_rows(tmp_path):
  path = _write(tmp_path / "bad.jsonl", [GOOD[0], "{oops", GOOD[1]])
  report = tmp_path / "bad_rows.txt"
  docs = list(corpus.read_corpus(path, bad_rows_report=str(report)))
  assert [d.id for d in docs] == ["a", "2"]
  assert report.read_text().splitlines() == [f"{path}:2: bad JSON (Expecting property name "
                                             "enclosed in double quotes)"]


def test_chunker_makes_100_word_titled_passages():
  text = " ".join(f"w{i}" for i in range(250))
  docs = list(corpus.chunk_articles([("T1", text), ("T2", "short one")], first_id=10))
  assert [d.id for d in docs] == ["10", "11", "12", "13"]
  assert [len(d.text.split()) for d in docs] == [100, 100, 50, 2]
  assert docs[1].text.split()[0] == "w100" and docs[2].title == "T1" and docs[3].title == "T2"
  assert corpus.chunk_words("", 100) == []
  with pytest.raises(ValueError, match="words_per_passage"):
    corpus.chunk_words("a b", 0)


def test_jsonl_docstore_reads_by_offset_and_round_trips(tmp_path):
  docs = [Document(str(i), f"Title {i}", f"text number {i} ünïcode") for i in range(50)]
  path = str(tmp_path / "c.jsonl")
  assert corpus.write_corpus(docs, path) == 50
  store = JsonlDocStore.build(path)
  assert len(store) == 50 and store.offsets.dtype == np.int64
  assert store.get([49, 0, 7]) == [docs[49], docs[0], docs[7]]
  assert store.fingerprint == corpus.file_sha256(path)
  store.save(str(tmp_path / "offsets.npy"))
  again = JsonlDocStore.load(str(tmp_path / "offsets.npy"), path)
  assert again.get([3]) == [docs[3]] and again.fingerprint == store.fingerprint
  with open(path, "a") as f:
    f.write(json.dumps({"id": "new", "contents": "x"}) + "\n")
  with pytest.raises(ValueError, match="not the corpus"):
    JsonlDocStore.load(str(tmp_path / "offsets.npy"), path)


def test_list_docstore_fingerprint_depends_on_contents():
  a = ListDocStore([Document("1", "t", "x")])
  b = ListDocStore([Document("1", "t", "y")])
  assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 64
  assert a.fingerprint == ListDocStore([Document("1", "t", "x")]).fingerprint


def test_wiki_extracts_reader():
  path = require_asset("wiki_extracts")
  articles = corpus.read_wiki_extracts(path)
  assert len(articles) == 10033
  assert articles[1].title == "2001: A Space Odyssey"
  assert articles[1].description == "1968 film by Stanley Kubrick"
  assert articles[1].text.startswith("2001: A Space Odyssey is a 1968 epic science fiction")
  assert sum(1 for a in articles if a.description) == 10033 - 171
  docs = corpus.wiki_documents(articles[:3])
  assert [d.id for d in docs] == ["0", "1", "2"] and docs[2].title == articles[2].title
