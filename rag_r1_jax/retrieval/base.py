"""The retrieval interface: documents, timing stats, the Retriever ABC and a tiny exact retriever.

Every backend (dense FAISS, BM25, a remote Search-R1 server, the exact one here) answers one
batched call `retrieve(queries, topk)` with one best-first list of `Document`s per query.
"""

import abc
import collections
import dataclasses
import re
import time
from typing import Any, Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Document:
  """One retrieved passage; `score` is the backend's similarity (higher is better)."""
  id: str
  title: str
  text: str
  score: float = 0.0

  @property
  def contents(self) -> str:
    """The Search-R1 / FlashRAG corpus layout: '"Title"\\ntext'."""
    return f'"{self.title}"\n{self.text}'


def parse_contents(contents: str) -> tuple[str, str]:
  """Splits '"Title"\\ntext' into (title, text); the title loses its surrounding quotes.

  Contents without a newline are all text with an empty title.
  """
  head, sep, rest = contents.partition("\n")
  if not sep:
    return "", contents.strip()
  title = head.strip()
  if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
    title = title[1:-1]
  return title, rest.strip()


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
  """`text` with each lone surrogate (which no UTF-8 tokenizer can encode) replaced by U+FFFD."""
  return _SURROGATE_RE.sub("\ufffd", text)


@dataclasses.dataclass
class RetrievalStats:
  """Counts of batched calls and queries, wall-clock seconds spent inside `retrieve`, and
  `empty`: non-empty queries that got no document (a remote retriever also counts the empty
  answers it refused and retried)."""
  calls: int = 0
  queries: int = 0
  seconds: float = 0.0
  empty: int = 0

  def reset(self) -> None:
    self.calls, self.queries, self.seconds, self.empty = 0, 0, 0.0, 0

  def record(self, num_queries: int, seconds: float) -> None:
    self.calls += 1
    self.queries += num_queries
    self.seconds += seconds

  def as_dict(self) -> dict[str, float]:
    per_query = self.seconds / self.queries if self.queries else 0.0
    return {"calls": self.calls, "queries": self.queries, "seconds": self.seconds,
            "seconds_per_query": per_query, "empty": self.empty}


def empty_rows(queries: Sequence[str], results: Sequence[Sequence[Document]]) -> list[int]:
  """Indices of the non-empty queries whose result list is empty."""
  return [i for i, (q, row) in enumerate(zip(queries, results)) if q.strip() and not row]


def documents_at(docs, scores: np.ndarray, rows: np.ndarray) -> list[list[Document]]:
  """scores, rows: [n, k] -> per query, the Documents of DocStore `docs` at the valid rows
  (>= 0) with their scores; each distinct row is read from the store once."""
  hits = sorted({int(r) for r in rows.ravel() if r >= 0})
  by_row = dict(zip(hits, docs.get(hits)))
  return [[dataclasses.replace(by_row[int(r)], score=float(s))
           for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]


class Retriever(abc.ABC):
  """A batched retriever: one call looks up all queries of a rollout turn at once."""

  def __init__(self):
    self.stats = RetrievalStats()

  @abc.abstractmethod
  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
    """One best-first list of at most `topk` documents per query, in query order."""

  def _timed(self, queries: Sequence[str], topk: int, fn) -> list[list[Document]]:
    """Runs `fn(queries, topk)` and records it in `stats`; validates topk."""
    if topk < 1:
      raise ValueError(f"topk must be >= 1, got {topk}")
    start = time.perf_counter()
    result = fn(list(queries), topk)
    self.stats.record(len(queries), time.perf_counter() - start)
    self.stats.empty += len(empty_rows(queries, result))
    return result


class RowRetriever(Retriever):
  """A retriever over a DocStore `self.docs` whose `search_rows(queries, k)` gives (scores,
  rows) [n, k] (-1 where none found): the documents are read once per call from those rows."""

  docs: Any

  @abc.abstractmethod
  def search_rows(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, k] float32, rows [n, k] int64), best first; -1 rows where none found."""

  def _search(self, queries: list[str], topk: int) -> list[list[Document]]:
    if not queries:
      return []
    return documents_at(self.docs, *self.search_rows(queries, topk))

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
    return self._timed(queries, topk, self._search)


_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def tokenize_words(text: str) -> list[str]:
  """Lower-cased word tokens (letters, digits, underscore)."""
  return _TOKEN_RE.findall(text.lower())


class ExactRetriever(Retriever):
  """Exact TF-IDF cosine search over a small in-memory list of documents (numpy only).

  Meant for tests and tiny corpora: the document matrix is dense [num_docs, vocab].
  Ties are broken by document order, so results are deterministic.
  """

  def __init__(self, documents: Iterable[Document]):
    super().__init__()
    self.documents = list(documents)
    if not self.documents:
      raise ValueError("ExactRetriever needs at least one document")
    counts = [collections.Counter(tokenize_words(d.title + " " + d.text)) for d in self.documents]
    vocab = sorted({w for c in counts for w in c})
    self.vocab = {w: i for i, w in enumerate(vocab)}
    tf = np.zeros((len(self.documents), len(vocab)), np.float32)  # [docs, vocab]
    for row, c in enumerate(counts):
      for w, n in c.items():
        tf[row, self.vocab[w]] = n
    df = (tf > 0).sum(axis=0)  # [vocab]
    self.idf = np.log((1.0 + len(self.documents)) / (1.0 + df)).astype(np.float32) + 1.0
    self.matrix = _l2_rows(tf * self.idf)  # [docs, vocab]

  def _query_matrix(self, queries: Sequence[str]) -> np.ndarray:
    q = np.zeros((len(queries), len(self.vocab)), np.float32)  # [queries, vocab]
    for row, query in enumerate(queries):
      for w in tokenize_words(query):
        col = self.vocab.get(w)
        if col is not None:
          q[row, col] += 1.0
    return _l2_rows(q * self.idf)

  def _search(self, queries: list[str], topk: int) -> list[list[Document]]:
    if not queries:
      return []
    scores = self._query_matrix(queries) @ self.matrix.T  # [queries, docs]
    k = min(topk, len(self.documents))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [queries, k]
    return [[dataclasses.replace(self.documents[j], score=float(scores[i, j])) for j in row]
            for i, row in enumerate(order)]

  def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
    return self._timed(queries, topk, self._search)


def _l2_rows(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm; all-zero rows stay zero."""
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, 1e-12)

