"""A Retriever backed by a Search-R1-compatible HTTP server, with timeouts, retries and backoff.

A call either returns one document list per query or raises RetrievalServerError naming the
server: connection failures, timeouts, 5xx answers and malformed answers (not JSON, the wrong
number of result lists, a document without text or with a non-finite score, no document for
any of the non-empty queries) are retried with exponential backoff; 4xx answers fail at once.
A query without documents among others that have some is accepted (a lexical index finds
nothing for a query none of whose words it knows) and counted in `stats.empty`. Text is
cleaned where it enters: a lone surrogate becomes U+FFFD.
A batch larger than `max_queries_per_request` is sent as several requests, and the call fails as
a whole if any of them fails.
"""

import json
import math
import time
from typing import Any, Sequence

import requests

from rag_r1_jax.retrieval.base import (Document, Retriever, clean_text, empty_rows,
                                       parse_contents)


class RetrievalServerError(RuntimeError):
  """The retrieval server could not answer a request (after retries where they apply)."""


class MalformedResponse(RetrievalServerError):
  """A 200 answer whose body is not a valid Search-R1 result for the request."""


def retrieve_url(url: str) -> str:
  """Accepts a base URL ('http://host:port') or Search-R1's full '.../retrieve' URL."""
  if not url.startswith(("http://", "https://")):
    raise ValueError(f"retrieval.server_url must start with http:// or https://, got {url!r}")
  url = url.rstrip("/")
  return url if url.endswith("/retrieve") else url + "/retrieve"


def _text(value: Any, field: str, where: str) -> str:
  if not isinstance(value, str):
    raise MalformedResponse(f"{where}: '{field}' must be a string, got {value!r:.100}")
  return clean_text(value)


def parse_document(item: Any, score: float | None = None, where: str = "document") -> Document:
  """One Search-R1 result entry ({"document": {...}, "score"} or a bare document).

  Raises MalformedResponse (naming `where`) for an entry without text or with a score that is
  not a finite number; strings are cleaned (`clean_text`).
  """
  if isinstance(item, dict) and "document" in item:
    return parse_document(item["document"], _score(item, where), where)
  if not isinstance(item, dict):
    raise MalformedResponse(f"{where}: expected a JSON object, got {item!r:.200}")
  if "contents" in item:
    title, text = parse_contents(_text(item["contents"], "contents", where))
  else:
    title = _text(item.get("title", ""), "title", where)
    text = _text(item.get("text", ""), "text", where)
  if not (title.strip() or text.strip()):
    raise MalformedResponse(f"{where}: no text (needs a non-empty 'contents', or 'title' / "
                            f"'text'): {item!r:.200}")
  doc_id = item.get("id", "")
  if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
    raise MalformedResponse(f"{where}: 'id' must be a string or an integer, got {doc_id!r:.100}")
  return Document(id=clean_text(str(doc_id)), title=title, text=text,
                  score=score if score is not None else _score(item, where))


def _score(item: dict, where: str) -> float:
  """The entry's 'score' (0.0 when the server sends none, as Search-R1 without scores)."""
  raw = item.get("score", 0.0)
  if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
    raise MalformedResponse(f"{where}: 'score' must be a finite number, got {raw!r:.100}")
  return float(raw)


class RemoteRetriever(Retriever):
  """POSTs each batch to `url`; sleeps backoff_s * 2**attempt (capped) between retries."""

  def __init__(self, url: str, timeout_s: float = 30.0, max_retries: int = 3,
               backoff_s: float = 0.5, max_backoff_s: float = 8.0,
               max_queries_per_request: int = 1024):
    super().__init__()
    if timeout_s <= 0:
      raise ValueError(f"retrieval.timeout_s must be > 0, got {timeout_s}")
    if max_retries < 0:
      raise ValueError(f"retrieval.max_retries must be >= 0, got {max_retries}")
    self.url = retrieve_url(url)
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.max_backoff_s = max_backoff_s
    self.max_queries_per_request = max_queries_per_request
    self.session = requests.Session()

  def health(self) -> dict[str, Any]:
    """GET /health of the server (one attempt)."""
    try:
      resp = self.session.get(self.url[:-len("/retrieve")] + "/health", timeout=self.timeout_s)
      resp.raise_for_status()
      return resp.json()
    except (requests.RequestException, ValueError) as e:
      raise RetrievalServerError(f"retrieval server {self.url} health check failed: {e}") from e

  def _post(self, queries: list[str], topk: int) -> list[list[Document]]:
    """One request with retries; the result has exactly one list per query."""
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    last_error = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
      try:
        resp = self.session.post(self.url, json=payload, timeout=self.timeout_s)
      except requests.RequestException as e:
        last_error = f"{type(e).__name__}: {e}"
        continue
      if resp.status_code >= 500:
        last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
        continue
      if resp.status_code >= 400:
        raise RetrievalServerError(f"retrieval server {self.url} refused the request "
                                   f"(HTTP {resp.status_code}): {resp.text[:300]}")
      try:
        return self._parse(resp.content, queries)
      except MalformedResponse as e:
        last_error = f"malformed response: {e}"
    raise RetrievalServerError(f"retrieval server {self.url} failed {self.max_retries + 1} "
                               f"attempt(s) (timeout {self.timeout_s}s each); last error: "
                               f"{last_error}")

  def _parse(self, content: bytes, queries: list[str]) -> list[list[Document]]:
    """The document lists of a 200 answer's body; raises MalformedResponse."""
    try:
      body = json.loads(content)
    except (ValueError, RecursionError) as e:
      raise MalformedResponse(f"the body is not JSON ({e}): {content[:300]!r}") from None
    if not isinstance(body, dict) or "result" not in body:
      raise MalformedResponse(f"the body has no 'result': {content[:300]!r}")
    result = body["result"]
    if not isinstance(result, list) or len(result) != len(queries):
      got = len(result) if isinstance(result, list) else type(result).__name__
      raise MalformedResponse(f"answered {got} result lists for {len(queries)} queries")
    docs = []
    for i, row in enumerate(result):
      if not isinstance(row, list):
        raise MalformedResponse(f"result {i} is not a list: {row!r:.200}")
      docs.append([parse_document(item, where=f"query {i} ({queries[i]!r:.80}), document {j}")
                   for j, item in enumerate(row)])
    empty = empty_rows(queries, docs)
    asked = sum(1 for q in queries if q.strip())
    if empty and len(empty) == asked:  # (an accepted answer's empties are counted by _timed)
      self.stats.empty += len(empty)
      raise MalformedResponse(f"all {asked} queries got no documents (first: {queries[empty[0]]!r:.80}); "
                              "an index that finds nothing at all is empty or not loaded")
    return docs

  def _search(self, queries: list[str], topk: int) -> list[list[Document]]:
    out: list[list[Document]] = []
    for start in range(0, len(queries), self.max_queries_per_request):
      out.extend(self._post(queries[start:start + self.max_queries_per_request], topk))
    return out

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
    if not queries:
      return []
    return self._timed(queries, topk, self._search)
