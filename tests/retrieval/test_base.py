"""Tests for the retrieval interface and the exact TF-IDF retriever."""

import pytest

from rag_r1_jax.retrieval import base


def _docs():
  return [
      base.Document("0", "Paris", "Paris is the capital of France."),
      base.Document("1", "Berlin", "Berlin is the capital of Germany."),
      base.Document("2", "Banana", "A banana is an elongated edible fruit."),
  ]


def test_contents_round_trip():
  doc = base.Document("7", "Ada Lovelace", "She wrote the first program.\nSecond line.")
  assert doc.contents == '"Ada Lovelace"\nShe wrote the first program.\nSecond line.'
  assert base.parse_contents(doc.contents) == ("Ada Lovelace", doc.text)
  assert base.parse_contents("no title here") == ("", "no title here")


def test_exact_retriever_ranks_and_scores():
  r = base.ExactRetriever(_docs())
  out = r.retrieve(["capital of Germany", "edible fruit", "zzz unknown"], topk=2)
  assert [len(x) for x in out] == [2, 2, 2]
  assert out[0][0].id == "1" and out[0][1].id == "0"
  assert out[1][0].id == "2"
  assert out[0][0].score > out[0][1].score > 0.0
  assert out[2][0].score == 0.0  # no shared words: zero similarity, order by document
  assert r.stats.calls == 1 and r.stats.queries == 3 and r.stats.seconds > 0
  r.stats.reset()
  assert (r.stats.calls, r.stats.queries, r.stats.seconds) == (0, 0, 0.0)


def test_exact_retriever_topk_clamped_and_validated():
  r = base.ExactRetriever(_docs())
  assert len(r.retrieve(["paris"], topk=10)[0]) == 3
  assert r.retrieve([], topk=3) == []
  with pytest.raises(ValueError, match="topk"):
    r.retrieve(["paris"], topk=0)
