"""RemoteRetriever against a loopback server that answers what each test tells it to."""

import json
import math

import pytest

from rag_r1_jax.retrieval.base import Document, ExactRetriever, Retriever
from rag_r1_jax.retrieval.client import (MalformedResponse, RemoteRetriever,
                                         RetrievalServerError, parse_document)
from rag_r1_jax.retrieval.server import RetrievalServer

DOCS = [Document("0", "Paris", "Paris is the capital of France.")]


class ScriptedServer(RetrievalServer):
  """Answers every /retrieve with the next of `answers` (the last one repeats)."""

  def __init__(self, *answers):
    super().__init__(ExactRetriever(DOCS))
    self.answers, self.requests = list(answers), 0

  def handle_retrieve(self, body):
    self.requests += 1
    return 200, self.answers[min(self.requests, len(self.answers)) - 1]


def _doc(contents, score=1.0, doc_id="7"):
  return {"document": {"id": doc_id, "contents": contents}, "score": score}


def test_empty_result_lists_are_retried_then_fail_naming_the_server():
  with ScriptedServer({"result": [[], []]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=2, backoff_s=0.01)
    with pytest.raises(RetrievalServerError) as e:
      client.retrieve(["who wrote hamlet", "capital of peru"], 1)
  assert f"retrieval server {server.url}/retrieve failed 3 attempt(s)" in str(e.value)
  assert "all 2 queries got no documents (first: 'who wrote hamlet')" in str(e.value)
  assert server.requests == 3
  assert client.stats.empty == 6 and client.stats.calls == 0  # counted, nothing recorded


def test_some_queries_without_documents_are_accepted_and_counted():
  """A BM25 server finds nothing for a query none of whose words it knows: that query gets an
  empty list (its observation says so), the others their documents; no retry, no error."""
  with ScriptedServer({"result": [[_doc('"T"\nbody')], []]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=2, backoff_s=0.01)
    hits = client.retrieve(["who wrote hamlet", "qqxzv"], 1)
  assert [[d.id for d in row] for row in hits] == [["7"], []]
  assert server.requests == 1 and client.stats.empty == 1 and client.stats.calls == 1


def test_an_empty_answer_then_a_good_one_succeeds_and_is_counted():
  with ScriptedServer({"result": [[]]}, {"result": [[_doc('"T"\nbody')]]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=1, backoff_s=0.01)
    [[doc]] = client.retrieve(["q"], 1)
  assert (doc.id, doc.title, doc.text, doc.score) == ("7", "T", "body", 1.0)
  assert client.stats.as_dict()["empty"] == 1 and client.stats.calls == 1


@pytest.mark.parametrize("entry,message", [
    ({"document": {"id": "7"}, "score": 1.0}, "document 0: no text"),
    ({"document": {"id": "7", "contents": ""}, "score": 1.0}, "document 0: no text"),
    ({"document": {"id": "7", "contents": 5}, "score": 1.0},
     "document 0: 'contents' must be a string"),
    ({"document": {"id": [1], "contents": "x"}}, "document 0: 'id' must be a string or an integer"),
    ("just text", "document 0: expected a JSON object"),
])
def test_documents_without_text_are_malformed(entry, message):
  with ScriptedServer({"result": [[entry]]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    with pytest.raises(RetrievalServerError, match="malformed response: query 0 \\('q'\\), "
                       + message.replace("(", "\\(")):
      client.retrieve(["q"], 1)


def test_nan_score_is_reported_as_such():
  with ScriptedServer({"result": [[_doc("x", score=math.nan)]]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    with pytest.raises(RetrievalServerError) as e:
      client.retrieve(["q"], 1)
  assert "document 0: 'score' must be a finite number, got nan" in str(e.value)
  assert "no 'result'" not in str(e.value)
  with pytest.raises(MalformedResponse, match="'score' must be a finite number, got 'high'"):
    parse_document({"document": {"contents": "x"}, "score": "high"})


def test_lone_surrogates_are_replaced_where_text_enters(monkeypatch):
  contents = '"Ti\ud800tle"\nbad \udc00 text'
  with ScriptedServer({"result": [[_doc(contents, doc_id="i\ud83d")]]}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    [[doc]] = client.retrieve(["q"], 1)
  assert (doc.id, doc.title, doc.text) == ("i\ufffd", "Ti\ufffdtle", "bad \ufffd text")
  doc.contents.encode("utf-8")  # what a tokenizer needs
  pair = json.loads('{"contents": "\\ud83d\\ude00 ok"}')  # an escaped pair is one character
  assert parse_document(pair).text == "\U0001F600 ok"


def test_malformed_bodies_say_what_is_wrong():
  class Raw(ScriptedServer):
    def _answer_retrieve(self, body):
      return 200, b"not json"
  with Raw() as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    with pytest.raises(RetrievalServerError, match="the body is not JSON"):
      client.retrieve(["q"], 1)
  with ScriptedServer({"results": []}) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    with pytest.raises(RetrievalServerError, match="the body has no 'result'"):
      client.retrieve(["q"], 1)


def test_local_retrievers_count_empty_hits_too():
  class Empty(Retriever):
    def retrieve(self, queries, topk):
      return self._timed(queries, topk, lambda q, k: [[] for _ in q])
  r = Empty()
  assert r.retrieve(["a", " ", "b"], 1) == [[], [], []]
  assert r.stats.empty == 2 and r.stats.as_dict()["empty"] == 2
