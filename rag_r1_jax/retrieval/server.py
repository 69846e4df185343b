"""A retrieval HTTP server speaking Search-R1's API, on the standard library's asyncio.

POST /retrieve  {"queries": [...], "topk": 3, "return_scores": true}
  -> {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}
  (without return_scores: {"result": [[{"id", "contents"}, ...], ...]}, as Search-R1 does)
GET /health     -> {"status": "ok", "documents": n, "stats": {...}, "server": {...}}
Requests over the limits get a 4xx JSON error {"error": "..."}; it binds 127.0.0.1 by default.

One event-loop thread reads requests and writes answers, so a connection that stalls costs a
socket, not a thread: at most `max_connections` are open at once (more are answered 503 and
closed), a request must arrive whole within `request_timeout_s` of its first byte and a
keep-alive connection with no new request is closed after `idle_timeout_s`. Retrievals run one
at a time, in order, on a worker thread.
"""

import asyncio
import dataclasses
import http
import json
import queue
import re
import socket
import threading
from typing import Any, Callable

from rag_r1_jax.retrieval.base import Document, Retriever


@dataclasses.dataclass(frozen=True)
class ServerLimits:
  """Per-request and per-server limits; larger requests are refused with 413 or 400."""
  max_queries: int = 1024
  max_query_chars: int = 2048
  max_topk: int = 100
  max_body_bytes: int = 4 << 20
  max_header_bytes: int = 16 << 10  # the request line and headers
  max_connections: int = 512  # open at once; a further one is answered 503 and closed
  request_timeout_s: float = 30.0  # to receive a whole request, and to send its answer
  idle_timeout_s: float = 120.0  # a keep-alive connection waits this long for its next request

  def __post_init__(self):
    for name in ("max_queries", "max_query_chars", "max_topk", "max_body_bytes",
                 "max_header_bytes", "max_connections", "request_timeout_s", "idle_timeout_s"):
      if not getattr(self, name) > 0:
        raise ValueError(f"ServerLimits.{name} must be positive, got {getattr(self, name)!r}")


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
  except RecursionError:
    raise RequestError(400, "request body is nested too deeply to parse") from None
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


def encode_json(payload: dict[str, Any]) -> bytes:
  """UTF-8 JSON; a lone surrogate (unencodable) is written as its JSON escape `\\udXXX`."""
  return json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")


def http_response(status: int, body: bytes, keep_alive: bool) -> bytes:
  """The bytes of one HTTP/1.1 response with a JSON body."""
  head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
          "Content-Type: application/json", f"Content-Length: {len(body)}"]
  if not keep_alive:
    head.append("Connection: close")
  return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


@dataclasses.dataclass(frozen=True)
class RequestHead:
  """A parsed request line and headers (header names lower-cased)."""
  method: str
  path: str
  version: str
  headers: dict[str, str]


def parse_head(head: bytes) -> RequestHead:
  """The request line and headers of `head` (ending in a blank line); raises RequestError."""
  lines = head.decode("latin-1").split("\r\n")
  parts = lines[0].split()
  if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
    raise RequestError(400, f"malformed request line {lines[0][:100]!r}")
  headers: dict[str, str] = {}
  for line in lines[1:]:
    if not line:
      continue
    name, sep, value = line.partition(":")
    if not sep or not name or name != name.strip():
      raise RequestError(400, f"malformed header line {line[:100]!r}")
    name, value = name.lower(), value.strip()
    if name in headers and headers[name] != value:
      raise RequestError(400, f"conflicting '{name}' headers")
    headers[name] = value
  path = parts[1].split("?", 1)[0].rstrip("/")
  return RequestHead(parts[0], path, parts[2], headers)


def body_length(head: RequestHead, limits: ServerLimits) -> int:
  """The declared body length of a request; raises RequestError (411, 400, 413)."""
  if "transfer-encoding" in head.headers:
    raise RequestError(411, "a Content-Length header is required (chunked bodies are not "
                       "accepted)")
  value = head.headers.get("content-length")
  if value is None:
    raise RequestError(411, "a Content-Length header is required")
  if not re.fullmatch(r"[0-9]{1,18}", value):
    raise RequestError(400, f"Content-Length must be a non-negative integer, got {value[:40]!r}")
  return int(value)


class _Close(Exception):
  """Ends a connection without an answer (the client closed it or a timeout passed)."""


class RetrievalServer:
  """Serves a Retriever over HTTP; one retrieval runs at a time, on a worker thread."""

  def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 0,
               limits: ServerLimits = ServerLimits(), num_documents: int | None = None):
    self.retriever = retriever
    self.limits = limits
    self.num_documents = num_documents
    self.counters = {"refused": 0, "timed_out": 0, "bad_requests": 0}
    self._sock = socket.create_server((host, port), backlog=min(limits.max_connections, 4096))
    self._url = "http://{}:{}".format(*self._sock.getsockname()[:2])
    self._writers: set[asyncio.StreamWriter] = set()
    self._jobs: queue.SimpleQueue = queue.SimpleQueue()
    self._worker = threading.Thread(target=self._work, daemon=True, name="retrieval-worker")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._stop: asyncio.Future | None = None
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    return self._url

  def start(self) -> "RetrievalServer":
    """Serves from a background thread; returns self (see `url`)."""
    self._prepare()
    self._thread = threading.Thread(target=self._run, daemon=True, name="retrieval-server")
    self._thread.start()
    return self

  def serve_forever(self) -> None:
    """Serves in this thread until interrupted (KeyboardInterrupt) or `stop` from another."""
    self._prepare()
    self._run()

  def stop(self) -> None:
    """Stops accepting requests, closes the listening socket and all open connections."""
    if self._loop is not None and not self._loop.is_closed():
      self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    self._sock.close()
    self._jobs.put(None)

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
    docs = self.retriever.retrieve(queries, topk)
    return 200, format_result(docs, return_scores)

  def health(self) -> dict[str, Any]:
    return {"status": "ok", "documents": self.num_documents,
            "stats": self.retriever.stats.as_dict(),
            "server": dict(self.counters, connections=len(self._writers))}

  # ---- the worker thread -----------------------------------------------------------------------

  def _work(self) -> None:
    """Runs queued jobs in order; hands each result to the event loop's future."""
    while (job := self._jobs.get()) is not None:
      future, fn = job
      try:
        outcome = (True, fn())
      except Exception as e:  # noqa: BLE001  (delivered to the awaiting connection)
        outcome = (False, e)
      try:
        self._loop.call_soon_threadsafe(_settle, future, outcome)
      except RuntimeError:  # the loop closed while the job ran
        return

  def _in_worker(self, fn: Callable[[], Any]) -> asyncio.Future:
    future = self._loop.create_future()
    self._jobs.put((future, fn))
    return future

  def _answer_retrieve(self, body: bytes) -> tuple[int, bytes]:
    try:
      status, payload = self.handle_retrieve(body)
    except Exception as e:  # noqa: BLE001  (a retriever failure must reach the client)
      status, payload = 500, {"error": f"retrieval failed: {type(e).__name__}: {e}"}
    return status, encode_json(payload)

  # ---- the event loop --------------------------------------------------------------------------

  def _prepare(self) -> None:
    if self._loop is not None:
      raise RuntimeError("a RetrievalServer serves once; make a new one")
    self._loop = asyncio.new_event_loop()
    self._stop = self._loop.create_future()
    self._worker.start()

  def _run(self) -> None:
    loop = self._loop
    try:
      loop.run_until_complete(self._serve())
    finally:
      for writer in list(self._writers):
        writer.transport.abort()
      tasks = asyncio.all_tasks(loop)
      for task in tasks:
        task.cancel()
      if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
      loop.close()
      self._sock.close()

  async def _serve(self) -> None:
    server = await asyncio.start_server(self._connection, sock=self._sock,
                                        limit=self.limits.max_header_bytes)
    try:
      await self._stop
    finally:
      server.close()

  async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if len(self._writers) >= self.limits.max_connections:
      self.counters["refused"] += 1
      writer.write(http_response(503, encode_json(
          {"error": f"the server has {len(self._writers)} open connections, its limit; "
                    "retry later"}), keep_alive=False))
      writer.transport.close()
      return
    self._writers.add(writer)
    try:
      while await self._one_request(reader, writer):
        pass
    except (_Close, ConnectionError, asyncio.IncompleteReadError):
      pass
    except asyncio.CancelledError:  # the server is stopping: end quietly, it is the top task
      pass
    finally:
      self._writers.discard(writer)
      if writer.transport.get_write_buffer_size():
        writer.transport.abort()  # the client does not read: drop what it was sent
      else:
        writer.transport.close()

  async def _one_request(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
    """Reads and answers one request; whether the connection stays open for another."""
    loop = asyncio.get_running_loop()
    try:
      async with asyncio.timeout(self.limits.idle_timeout_s):
        first = await reader.read(1)
    except TimeoutError:
      raise _Close() from None
    if not first:
      return False  # the client closed the connection
    deadline = loop.time() + self.limits.request_timeout_s
    try:
      async with asyncio.timeout_at(deadline):
        try:
          raw = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
          await self._send(writer, 431, {"error": "request line and headers exceed "
                                                  f"{self.limits.max_header_bytes} bytes"},
                           keep_alive=False, deadline=deadline)
          return False
        try:
          head = parse_head(raw)
        except RequestError as e:
          await self._send(writer, e.status, {"error": str(e)}, False, deadline)
          return False
        keep_alive = (head.version == "HTTP/1.1"
                      and head.headers.get("connection", "").lower() != "close")
        if (head.method, head.path) == ("GET", "/health"):
          await self._send(writer, 200, self.health(), keep_alive, deadline)
          return keep_alive
        if (head.method, head.path) != ("POST", "/retrieve"):
          status = 404 if head.method in ("GET", "POST") else 405
          await self._send(writer, status, {"error": f"no such endpoint {head.method} "
                                                     f"{head.path or '/'}; use POST /retrieve"},
                           False, deadline)
          return False
        try:
          length = body_length(head, self.limits)
        except RequestError as e:
          await self._send(writer, e.status, {"error": str(e)}, False, deadline)
          return False
        if length > self.limits.max_body_bytes:
          await self._send(writer, 413, {"error": f"request body of {length} bytes exceeds the "
                                                  f"limit of {self.limits.max_body_bytes}"},
                           False, deadline)
          await _discard(reader, length)  # the client reads the answer once its body is sent
          return False
        body = await reader.readexactly(length)
    except TimeoutError:
      self.counters["timed_out"] += 1
      writer.write(http_response(408, encode_json(
          {"error": f"the request did not arrive whole within "
                    f"{self.limits.request_timeout_s}s"}), keep_alive=False))
      raise _Close() from None
    status, data = await self._in_worker(lambda: self._answer_retrieve(body))
    await self._write(writer, http_response(status, data, keep_alive),
                      loop.time() + self.limits.request_timeout_s)
    return keep_alive

  async def _send(self, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any],
                  keep_alive: bool, deadline: float) -> None:
    if status >= 400:
      self.counters["bad_requests"] += 1
    await self._write(writer, http_response(status, encode_json(payload), keep_alive), deadline)

  async def _write(self, writer: asyncio.StreamWriter, data: bytes, deadline: float) -> None:
    writer.write(data)
    try:
      async with asyncio.timeout_at(deadline):
        await writer.drain()
    except TimeoutError:
      self.counters["timed_out"] += 1
      raise _Close() from None


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
  """Reads and drops `length` bytes (fewer if the client closes first)."""
  while length > 0:
    chunk = await reader.read(min(length, 1 << 20))
    if not chunk:
      return
    length -= len(chunk)


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
  if future.cancelled():
    return
  ok, value = outcome
  if ok:
    future.set_result(value)
  else:
    future.set_exception(value)
