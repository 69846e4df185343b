"""The real HTTP server on a loopback port: Search-R1's API, limits, and the retrying client."""

import json
import threading
import time

import pytest
import requests

from rag_r1_jax.retrieval.base import Document, ExactRetriever, Retriever
from rag_r1_jax.retrieval.client import RemoteRetriever, RetrievalServerError, retrieve_url
from rag_r1_jax.retrieval.server import RetrievalServer, ServerLimits

DOCS = [Document("0", "Paris", "Paris is the capital of France."),
        Document("1", "Berlin", "Berlin is the capital of Germany."),
        Document("2", "Banana", "A banana is an elongated edible fruit."),
        Document("3", "Rome", "Rome is the capital of Italy.")]
LIMITS = ServerLimits(max_queries=8, max_query_chars=100, max_topk=5, max_body_bytes=4096)


@pytest.fixture
def server():
  with RetrievalServer(ExactRetriever(DOCS), limits=LIMITS, num_documents=len(DOCS)) as s:
    yield s


def test_search_r1_request_format(server):
  assert server.url.startswith("http://127.0.0.1:")
  queries = ["capital of Germany", "edible fruit"]
  resp = requests.post(server.url + "/retrieve",
                       json={"queries": queries, "topk": 2, "return_scores": True}, timeout=10)
  assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
  result = resp.json()["result"]
  want = ExactRetriever(DOCS).retrieve(queries, 2)
  assert [[item["document"]["id"] for item in row] for row in result] == [["1", "0"], ["2", "0"]]
  assert result[0][0]["document"]["contents"] == '"Berlin"\nBerlin is the capital of Germany.'
  assert [[item["score"] for item in row] for row in result] == \
         [[pytest.approx(d.score, abs=1e-6) for d in row] for row in want]
  plain = requests.post(server.url + "/retrieve", json={"queries": ["fruit"], "topk": 1},
                        timeout=10).json()
  assert plain == {"result": [[{"id": "2", "contents": '"Banana"\nA banana is an elongated '
                                                      'edible fruit.'}]]}
  health = requests.get(server.url + "/health", timeout=10).json()
  assert health["status"] == "ok" and health["documents"] == 4
  assert health["stats"]["calls"] == 2 and health["stats"]["queries"] == 3


@pytest.mark.parametrize("body,status,message", [
    ({"queries": ["q"] * 9, "topk": 1}, 413, "9 queries exceed the limit of 8"),
    ({"queries": ["x" * 101], "topk": 1}, 413, "query 0 has 101 characters"),
    ({"queries": "not a list", "topk": 1}, 400, "'queries' must be a list of strings"),
    ({"queries": ["q"], "topk": 6}, 400, "'topk' must be an integer in [1, 5]"),
    ({"queries": ["q"], "topk": 1, "return_scores": "yes"}, 400, "'return_scores'"),
])
def test_bad_requests_get_4xx_json_errors(server, body, status, message):
  resp = requests.post(server.url + "/retrieve", json=body, timeout=10)
  assert resp.status_code == status
  assert message in resp.json()["error"]


def test_oversized_body_bad_json_and_unknown_path(server):
  resp = requests.post(server.url + "/retrieve", data=b"{" + b" " * 5000 + b"}", timeout=10)
  assert resp.status_code == 413 and "exceeds the limit of 4096" in resp.json()["error"]
  resp = requests.post(server.url + "/retrieve", data=b"{nope", timeout=10)
  assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
  assert requests.get(server.url + "/other", timeout=10).status_code == 404


def test_client_round_trip_and_batch_splitting(server):
  client = RemoteRetriever(server.url, timeout_s=5, max_retries=0, max_queries_per_request=3)
  queries = ["capital of Italy", "fruit", "Paris", "Germany", "banana", "Rome"]
  got = client.retrieve(queries, topk=2)
  want = ExactRetriever(DOCS).retrieve(queries, 2)
  assert [[(d.id, d.title, d.text) for d in r] for r in got] == \
         [[(d.id, d.title, d.text) for d in r] for r in want]
  assert [[d.score for d in r] for r in got] == [[pytest.approx(d.score) for d in r] for r in want]
  assert client.stats.calls == 1 and client.stats.queries == 6
  assert server.retriever.stats.calls == 2  # two requests of at most 3 queries
  assert client.health()["status"] == "ok"
  assert retrieve_url("http://h:1/retrieve/") == "http://h:1/retrieve"
  with pytest.raises(RetrievalServerError, match=r"HTTP 413"):
    client.retrieve(["x" * 200], topk=1)  # 4xx: no retry, clear message


def test_server_stopped_mid_run_client_retries_then_fails(monkeypatch):
  server = RetrievalServer(ExactRetriever(DOCS)).start()
  client = RemoteRetriever(server.url, timeout_s=2, max_retries=3, backoff_s=0.05)
  assert [d.id for d in client.retrieve(["Rome"], 1)[0]] == ["3"]  # turn 1 works
  server.stop()
  sleeps = []
  real_sleep = time.sleep
  monkeypatch.setattr(time, "sleep", lambda s: sleeps.append(s) or real_sleep(s))
  start = time.perf_counter()
  with pytest.raises(RetrievalServerError, match=r"failed 4 attempt\(s\).*ConnectionError"):
    client.retrieve(["Paris", "fruit"], 1)  # turn 2: no server
  assert sleeps == [0.05, 0.1, 0.2]  # exponential backoff between the 4 attempts
  assert time.perf_counter() - start < 5
  assert client.stats.calls == 1  # the failed call recorded nothing


class _SlowRetriever(Retriever):
  """Hangs on every call after the first `ok_calls` ones."""

  def __init__(self, ok_calls: int):
    super().__init__()
    self.inner, self.ok_calls, self.release = ExactRetriever(DOCS), ok_calls, threading.Event()

  def retrieve(self, queries, topk):
    if self.stats.calls >= self.ok_calls:
      self.release.wait(30)
    self.stats.record(len(queries), 0.0)
    return self.inner.retrieve(queries, topk)


def test_hung_server_times_out_without_partial_result():
  slow = _SlowRetriever(ok_calls=1)
  with RetrievalServer(slow) as server:
    client = RemoteRetriever(server.url, timeout_s=0.3, max_retries=1, backoff_s=0.01,
                             max_queries_per_request=2)
    start = time.perf_counter()
    with pytest.raises(RetrievalServerError, match=r"failed 2 attempt\(s\) \(timeout 0.3s each\)"
                       r".*ReadTimeout"):
      client.retrieve(["Paris", "Rome", "fruit", "Berlin"], 1)  # 1st request ok, 2nd hangs
    elapsed = time.perf_counter() - start
    slow.release.set()
  assert elapsed < 3, elapsed


def test_malformed_server_response_is_an_error(monkeypatch):
  class Short(Retriever):
    def retrieve(self, queries, topk):
      return [[]]  # one list whatever the number of queries
  with RetrievalServer(Short()) as server:
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    with pytest.raises(RetrievalServerError, match="answered 1 result lists for 2 queries"):
      client.retrieve(["a", "b"], 1)


def test_retriever_exception_is_a_500_then_client_error():
  class Broken(Retriever):
    def retrieve(self, queries, topk):
      raise RuntimeError("index exploded")
  with RetrievalServer(Broken()) as server:
    resp = requests.post(server.url + "/retrieve", json={"queries": ["a"]}, timeout=5)
    assert resp.status_code == 500 and "index exploded" in json.loads(resp.text)["error"]
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=1, backoff_s=0.01)
    with pytest.raises(RetrievalServerError, match="HTTP 500"):
      client.retrieve(["a"], 1)
