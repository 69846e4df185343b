"""The real HTTP server on a loopback port: Search-R1's API, limits, and the retrying client."""

import dataclasses
import json
import socket
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


def _raw(server, data: bytes, timeout: float = 5.0) -> socket.socket:
  """A raw connection to the server that has sent `data`."""
  host, port = server.url[len("http://"):].split(":")
  sock = socket.create_connection((host, int(port)), timeout=timeout)
  if data:
    sock.sendall(data)
  return sock


def _read_all(sock: socket.socket) -> bytes:
  """Everything the server sends until it closes the connection."""
  out = b""
  try:
    while chunk := sock.recv(65536):
      out += chunk
  except ConnectionResetError:
    pass
  return out


def test_negative_content_length_is_refused_at_once(server):
  sock = _raw(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
  reply = _read_all(sock)  # times out (socket.timeout) if the server waits for a body
  assert reply.startswith(b"HTTP/1.1 400 ")
  assert b"Content-Length must be a non-negative integer, got '-1'" in reply
  sock = _raw(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
  assert _read_all(sock).startswith(b"HTTP/1.1 411 ")


def test_deeply_nested_json_is_a_400_not_a_500():
  limits = dataclasses.replace(LIMITS, max_body_bytes=1 << 16)
  with RetrievalServer(ExactRetriever(DOCS), limits=limits) as server:
    body = b"[" * 20000 + b"]" * 20000  # deeper than the interpreter's recursion limit
    resp = requests.post(server.url + "/retrieve", data=body, timeout=10)
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]


def test_oversized_body_gets_its_413_before_the_connection_closes(server):
  body = b"x" * (50 << 20)  # 50 MB against a 4096-byte limit
  message = f"request body of {len(body)} bytes exceeds the limit of 4096".encode()
  # A client that sends its whole body before reading (as http.client does) must not meet a
  # closed connection (broken pipe / reset) half way through.
  sock = _raw(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(body), timeout=30)
  sock.sendall(body)
  reply = _read_all(sock)
  assert reply.startswith(b"HTTP/1.1 413 ") and message in reply
  resp = requests.post(server.url + "/retrieve", data=body, timeout=30)
  assert resp.status_code == 413 and resp.json()["error"] == message.decode()
  assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_connections_beyond_the_limit_are_refused_with_503():
  limits = dataclasses.replace(LIMITS, max_connections=4)
  with RetrievalServer(ExactRetriever(DOCS), limits=limits) as server:
    held = [_raw(server, b"POST /retrieve HTTP/1.1\r\n") for _ in range(4)]
    _wait_for(lambda: _open_connections(server) == 4)
    extra = _read_all(_raw(server, b"GET /health HTTP/1.1\r\n\r\n"))
    assert extra.startswith(b"HTTP/1.1 503 ") and b"4 open connections, its limit" in extra
    held.pop().close()
    _wait_for(lambda: _open_connections(server) == 3)
    client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
    assert [d.id for d in client.retrieve(["Rome"], 1)[0]] == ["3"]
    assert server.counters["refused"] == 1
    for sock in held:
      sock.close()


def _open_connections(server) -> int:
  return server.health()["server"]["connections"]


def _wait_for(condition, timeout: float = 5.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "condition not reached"
    time.sleep(0.01)


def test_load_stalled_connections_and_normal_traffic():
  """100 stalled connections (a head that never ends, a body that never ends, silence) while
  8 clients send 200 normal requests: every normal request is answered at once, and the server
  drops each stalled connection once its timeout passes."""
  timeout_s = 12.0  # the traffic must finish while every stalled connection is still open
  limits = dataclasses.replace(LIMITS, max_connections=256, request_timeout_s=timeout_s,
                               idle_timeout_s=timeout_s)
  start = time.monotonic()
  with RetrievalServer(ExactRetriever(DOCS), limits=limits) as server:
    stalled = []
    for i in range(100):
      data = [b"POST /retrieve HTTP/1.1\r\nHost: x\r\n",
              b"POST /retrieve HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"queries\":",
              b""][i % 3]
      stalled.append(_raw(server, data, timeout=timeout_s + 20))
    opened = time.monotonic()
    _wait_for(lambda: _open_connections(server) == 100)

    latencies, errors = [], []

    def client_loop():
      client = RemoteRetriever(server.url, timeout_s=5, max_retries=0)
      for _ in range(25):
        t = time.perf_counter()
        try:
          got = client.retrieve(["capital of Italy", "fruit"], 1)
          assert [[d.id for d in row] for row in got] == [["3"], ["2"]]
        except Exception as e:  # noqa: BLE001  (collected and asserted below)
          errors.append(repr(e))
        latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    traffic_s = time.monotonic() - opened
    still_open = _open_connections(server)
    assert errors == [] and len(latencies) == 200
    assert traffic_s < timeout_s and still_open >= 100  # the traffic ran while all stalled

    replies = [_read_all(sock) for sock in stalled]  # returns once the server closes each
    dropped_s = time.monotonic() - opened
    for i, reply in enumerate(replies):
      if i % 3 == 2:
        assert reply == b""  # an idle connection is closed without an answer
      else:
        assert reply in (b"",) or reply.startswith(b"HTTP/1.1 408 ")
    assert timeout_s - 0.5 < dropped_s < timeout_s + 10
    _wait_for(lambda: _open_connections(server) == 0)
    assert server.counters["timed_out"] >= 66
    for sock in stalled:
      sock.close()
  latencies.sort()
  print(f"\nload: 100 stalled connections; 200 normal requests from 8 clients in "
        f"{traffic_s:.2f}s, latency p50 {latencies[100] * 1e3:.1f} ms, max "
        f"{latencies[-1] * 1e3:.1f} ms, 0 errors; stalled ones dropped after {dropped_s:.2f}s "
        f"(timeout {timeout_s}s); whole test {time.monotonic() - start:.1f}s")
  assert time.monotonic() - start < 60
