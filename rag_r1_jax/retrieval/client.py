"""A Retriever backed by a Search-R1-compatible HTTP server, with timeouts, retries and backoff.

A call either returns one document list per query or raises RetrievalServerError: connection
failures, timeouts and 5xx answers are retried with exponential backoff; 4xx answers and
malformed responses fail at once. A batch larger than `max_queries_per_request` is sent as
several requests, and the call fails as a whole if any of them fails.
"""

import time
from typing import Any, Sequence

import requests

from rag_r1_jax.retrieval.base import Document, Retriever, parse_contents


class RetrievalServerError(RuntimeError):
  """The retrieval server could not answer a request (after retries where they apply)."""


def retrieve_url(url: str) -> str:
  """Accepts a base URL ('http://host:port') or Search-R1's full '.../retrieve' URL."""
  if not url.startswith(("http://", "https://")):
    raise ValueError(f"retrieval.server_url must start with http:// or https://, got {url!r}")
  url = url.rstrip("/")
  return url if url.endswith("/retrieve") else url + "/retrieve"


def parse_document(item: Any, score: float | None = None) -> Document:
  """One Search-R1 result entry ({"document": {...}, "score"} or a bare document)."""
  if isinstance(item, dict) and "document" in item:
    return parse_document(item["document"], float(item.get("score", 0.0)))
  if not isinstance(item, dict):
    raise RetrievalServerError(f"malformed document in server response: {item!r:.200}")
  if "contents" in item:
    title, text = parse_contents(str(item["contents"]))
  else:
    title, text = str(item.get("title", "")), str(item.get("text", ""))
  return Document(id=str(item.get("id", "")), title=title, text=text,
                  score=score if score is not None else float(item.get("score", 0.0)))


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
      return self._parse(resp, len(queries))
    raise RetrievalServerError(f"retrieval server {self.url} failed {self.max_retries + 1} "
                               f"attempt(s) (timeout {self.timeout_s}s each); last error: "
                               f"{last_error}")

  def _parse(self, resp: requests.Response, num_queries: int) -> list[list[Document]]:
    try:
      result = resp.json()["result"]
    except (ValueError, KeyError, TypeError) as e:
      raise RetrievalServerError(f"retrieval server {self.url} sent a response without "
                                 f"'result': {resp.text[:300]}") from e
    if not isinstance(result, list) or len(result) != num_queries:
      got = len(result) if isinstance(result, list) else type(result).__name__
      raise RetrievalServerError(f"retrieval server {self.url} answered {got} result lists "
                                 f"for {num_queries} queries")
    return [[parse_document(item) for item in row] for row in result]

  def _search(self, queries: list[str], topk: int) -> list[list[Document]]:
    out: list[list[Document]] = []
    for start in range(0, len(queries), self.max_queries_per_request):
      out.extend(self._post(queries[start:start + self.max_queries_per_request], topk))
    return out

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
    if not queries:
      return []
    return self._timed(queries, topk, self._search)
