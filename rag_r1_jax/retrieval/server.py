"""A retrieval HTTP server speaking Search-R1's API, on the standard library's ThreadingHTTPServer.

POST /retrieve  {"queries": [...], "topk": 3, "return_scores": true}
  -> {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}
  (without return_scores: {"result": [[{"id", "contents"}, ...], ...]}, as Search-R1 does)
GET /health     -> {"status": "ok", "documents": n, "stats": {...}}
Requests over the limits get a 4xx JSON error {"error": "..."}; it binds 127.0.0.1 by default.
"""

import dataclasses
import http.server
import json
import socket
import threading
from typing import Any

from rag_r1_jax.retrieval.base import Document, Retriever


@dataclasses.dataclass(frozen=True)
class ServerLimits:
  """Per-request limits; larger requests are refused with 413 or 400."""
  max_queries: int = 1024
  max_query_chars: int = 2048
  max_topk: int = 100
  max_body_bytes: int = 4 << 20


class RequestError(ValueError):
  """A client error: carries the HTTP status to answer with."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def parse_request(body: bytes, limits: ServerLimits) -> tuple[list[str], int, bool]:
  """Validates a /retrieve body -> (queries, topk, return_scores); raises RequestError."""
  try:
    req = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(400, f"request body is not valid JSON: {e}") from None
  if not isinstance(req, dict):
    raise RequestError(400, "request body must be a JSON object")
  queries = req.get("queries")
  if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
    raise RequestError(400, "'queries' must be a list of strings")
  if len(queries) > limits.max_queries:
    raise RequestError(413, f"{len(queries)} queries exceed the limit of {limits.max_queries} "
                       "per request; split the batch")
  long = [i for i, q in enumerate(queries) if len(q) > limits.max_query_chars]
  if long:
    raise RequestError(413, f"query {long[0]} has {len(queries[long[0]])} characters, over the "
                       f"limit of {limits.max_query_chars}")
  topk = req.get("topk", 3)
  if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= limits.max_topk:
    raise RequestError(400, f"'topk' must be an integer in [1, {limits.max_topk}], got {topk!r}")
  return_scores = req.get("return_scores", False)
  if not isinstance(return_scores, bool):
    raise RequestError(400, f"'return_scores' must be true or false, got {return_scores!r}")
  return queries, topk, return_scores


def format_result(docs: list[list[Document]], return_scores: bool) -> dict[str, Any]:
  """Search-R1's response body for per-query document lists."""
  def doc_json(d: Document) -> dict[str, str]:
    return {"id": d.id, "contents": d.contents}
  if return_scores:
    return {"result": [[{"document": doc_json(d), "score": d.score} for d in row] for row in docs]}
  return {"result": [[doc_json(d) for d in row] for row in docs]}


class _TrackingHTTPServer(http.server.ThreadingHTTPServer):
  """ThreadingHTTPServer that can close its open keep-alive connections when stopped."""
  daemon_threads = True

  def __init__(self, *args, **kwargs):
    self._open: set[socket.socket] = set()
    self._open_lock = threading.Lock()
    super().__init__(*args, **kwargs)

  def process_request(self, request, client_address):
    with self._open_lock:
      self._open.add(request)
    super().process_request(request, client_address)

  def shutdown_request(self, request):
    with self._open_lock:
      self._open.discard(request)
    super().shutdown_request(request)

  def close_connections(self) -> None:
    """Ends every open connection, so clients with pooled keep-alive sockets see the stop."""
    with self._open_lock:
      for sock in list(self._open):
        try:
          sock.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass


class RetrievalServer:
  """Serves a Retriever over HTTP; one retrieval runs at a time (a lock guards the retriever)."""

  def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 0,
               limits: ServerLimits = ServerLimits(), num_documents: int | None = None):
    self.retriever = retriever
    self.limits = limits
    self.num_documents = num_documents
    self._lock = threading.Lock()
    self._thread: threading.Thread | None = None
    self.httpd = _TrackingHTTPServer((host, port), self._handler_class())

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}"

  def start(self) -> "RetrievalServer":
    """Serves from a background thread; returns self (see `url`)."""
    self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), daemon=True,
                                    name="retrieval-server")
    self._thread.start()
    return self

  def serve_forever(self) -> None:
    self.httpd.serve_forever()

  def stop(self) -> None:
    """Stops accepting requests, closes the listening socket and all open connections."""
    if self._thread is not None:
      self.httpd.shutdown()
      self._thread.join()
      self._thread = None
    self.httpd.server_close()
    self.httpd.close_connections()

  def __enter__(self) -> "RetrievalServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def handle_retrieve(self, body: bytes) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) for one /retrieve request."""
    try:
      queries, topk, return_scores = parse_request(body, self.limits)
    except RequestError as e:
      return e.status, {"error": str(e)}
    with self._lock:
      docs = self.retriever.retrieve(queries, topk)
    return 200, format_result(docs, return_scores)

  def health(self) -> dict[str, Any]:
    return {"status": "ok", "documents": self.num_documents,
            "stats": self.retriever.stats.as_dict()}

  def _handler_class(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args) -> None:  # quiet: one line per request is too much at RL rates
        pass

      def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        try:
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          # The client gave up (its timeout passed) and will retry; nothing is lost here.
          self.close_connection = True

      def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
          self._send(200, server.health())
        else:
          self._send(404, {"error": f"no such endpoint {self.path}; use POST /retrieve"})

      def do_POST(self) -> None:
        if self.path.rstrip("/") != "/retrieve":
          self._send(404, {"error": f"no such endpoint {self.path}; use POST /retrieve"})
          return
        try:
          length = int(self.headers.get("Content-Length", ""))
        except ValueError:
          self._send(411, {"error": "a Content-Length header is required"})
          return
        if length > server.limits.max_body_bytes:
          self.close_connection = True
          self._send(413, {"error": f"request body of {length} bytes exceeds the limit of "
                                    f"{server.limits.max_body_bytes}"})
          return
        body = self.rfile.read(length)
        try:
          status, payload = server.handle_retrieve(body)
        except Exception as e:  # a retriever failure must reach the client, not kill the thread
          status, payload = 500, {"error": f"retrieval failed: {type(e).__name__}: {e}"}
        self._send(status, payload)

    return Handler
