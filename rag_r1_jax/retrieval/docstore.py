"""Document stores: map an index row number to its Document.

`ListDocStore` keeps Documents in memory (tests, small corpora). `JsonlDocStore` keeps only
an int64 byte offset per row (8 bytes/passage: 232 MB for 29M passages) and reads the row
from the corpus file on demand, so the corpus text never sits in memory.
`corpus_docstore` keeps a corpus's offsets next to it (for indexes built elsewhere, which
carry no offsets of their own).
"""

import abc
import contextlib
import fcntl
import hashlib
import json
import os
import sys
import threading
from typing import Iterable, Sequence

import numpy as np

from rag_r1_jax.retrieval import corpus as corpus_lib
from rag_r1_jax.retrieval.base import Document


class DocStore(abc.ABC):
  """Row number -> Document."""

  @abc.abstractmethod
  def __len__(self) -> int:
    ...

  @abc.abstractmethod
  def get(self, rows: Sequence[int]) -> list[Document]:
    """The Documents at `rows` (0-based index rows), in order."""

  @property
  @abc.abstractmethod
  def fingerprint(self) -> str:
    """A hash of the corpus content, stored in index metadata to catch mismatches."""

  def iter_documents(self, batch: int = 4096) -> Iterable[Document]:
    """All Documents in row order, read `batch` at a time."""
    for start in range(0, len(self), batch):
      yield from self.get(range(start, min(start + batch, len(self))))


class ListDocStore(DocStore):
  """Documents held in a Python list; the fingerprint hashes their ids and contents."""

  def __init__(self, documents: Iterable[Document]):
    self.documents = list(documents)
    self._fingerprint = ""

  def __len__(self) -> int:
    return len(self.documents)

  def get(self, rows: Sequence[int]) -> list[Document]:
    return [self.documents[r] for r in rows]

  @property
  def fingerprint(self) -> str:
    if not self._fingerprint:
      digest = hashlib.sha256()
      for d in self.documents:
        digest.update(json.dumps([d.id, d.contents], ensure_ascii=False).encode())
        digest.update(b"\n")
      self._fingerprint = digest.hexdigest()
    return self._fingerprint


class JsonlDocStore(DocStore):
  """Rows of a corpus JSONL read by byte offset; build once, then save/load the offsets."""

  def __init__(self, corpus_path: str, offsets: np.ndarray, sha256: str):
    self.corpus_path = corpus_path
    self.offsets = offsets  # [rows] int64 byte offsets of the good rows
    self._sha256 = sha256
    self._lock = threading.Lock()
    self._file = open(corpus_path, "rb")

  @classmethod
  def build(cls, corpus_path: str, bad_rows_report: str | None = None) -> "JsonlDocStore":
    """One streaming pass: validates every row, records offsets and the file's sha256."""
    scan = corpus_lib.CorpusScan(corpus_path, bad_rows_report)
    offsets = np.fromiter((offset for offset, _ in scan), dtype=np.int64)
    return cls(corpus_path, offsets, scan.sha256)

  def save(self, path: str) -> None:
    """Writes offsets to `path` (npy format) and a JSON sidecar with the corpus identity."""
    with open(path, "wb") as f:
      np.save(f, self.offsets)
    stat = os.stat(self.corpus_path)
    with open(path + ".json", "w") as f:
      json.dump({"corpus_path": os.path.abspath(self.corpus_path), "sha256": self._sha256,
                 "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "rows": int(len(self.offsets))}, f, indent=1)

  @classmethod
  def load(cls, path: str, corpus_path: str) -> "JsonlDocStore":
    """Loads saved offsets; re-hashes the corpus only when its size or mtime changed."""
    with open(path + ".json") as f:
      meta = json.load(f)
    stat = os.stat(corpus_path)
    if stat.st_size != meta["size"]:
      raise ValueError(f"corpus {corpus_path} ({stat.st_size} bytes) is not the corpus the "
                       f"offsets {path} were built from ({meta['size']} bytes); rebuild the index")
    if stat.st_mtime_ns != meta["mtime_ns"]:
      sha = corpus_lib.file_sha256(corpus_path)
      if sha != meta["sha256"]:
        raise ValueError(f"corpus {corpus_path} changed since {path} was built "
                         f"(sha256 {sha[:12]} != {meta['sha256'][:12]}); rebuild the index")
    offsets = np.load(path)
    return cls(corpus_path, offsets, meta["sha256"])

  def __len__(self) -> int:
    return int(len(self.offsets))

  def get(self, rows: Sequence[int]) -> list[Document]:
    docs = []
    with self._lock:
      for r in rows:
        self._file.seek(int(self.offsets[r]))
        line = self._file.readline()
        parsed = corpus_lib.parse_row(line, self.corpus_path, -1)
        if isinstance(parsed, corpus_lib.BadRow):
          raise ValueError(f"{self.corpus_path} row {r} at byte {self.offsets[r]} no longer "
                           f"parses ({parsed.reason}); the corpus changed, rebuild the index")
        docs.append(parsed)
    return docs

  @property
  def fingerprint(self) -> str:
    return self._sha256

  def close(self) -> None:
    self._file.close()


def offsets_cache_path(corpus_path: str) -> str:
  """Where `corpus_docstore` keeps a corpus's offsets: next to it, else under ~/.cache."""
  beside = corpus_path + ".offsets.npy"
  if os.access(os.path.dirname(os.path.abspath(corpus_path)), os.W_OK):
    return beside
  key = hashlib.sha256(os.path.abspath(corpus_path).encode()).hexdigest()[:16]
  cache = os.path.join(os.path.expanduser("~/.cache/rag_r1_jax/corpus_offsets"), key)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  return cache + ".offsets.npy"


def corpus_docstore(corpus_path: str) -> JsonlDocStore:
  """The JsonlDocStore of a whole corpus, its offsets read from the cache or built and cached.

  Every row must parse (a skipped row would shift the rows after it against an index built
  over all of them); a bad row raises CorpusError naming file and line. A cache whose corpus
  changed is rebuilt.
  """
  if not os.path.isfile(corpus_path):
    raise FileNotFoundError(f"corpus file {corpus_path} does not exist "
                            "(config retrieval.corpus_path)")
  cache = offsets_cache_path(corpus_path)
  # Processes sharing the cache's file system take turns: the first builds (one pass over
  # the corpus, minutes for wiki-18), the others wait and load what it wrote.
  with _exclusive_lock(cache + ".lock"):
    if os.path.isfile(cache) and os.path.isfile(cache + ".json"):
      try:
        return JsonlDocStore.load(cache, corpus_path)
      except (ValueError, OSError, KeyError) as e:
        print(f"retrieval: rebuilding the offsets of {corpus_path} ({e})", file=sys.stderr)
    print(f"retrieval: indexing the rows of {corpus_path} "
          f"({os.path.getsize(corpus_path) / 2**20:.0f} MiB, one pass)", file=sys.stderr)
    docs = JsonlDocStore.build(corpus_path)
    tmp = f"{cache}.{os.getpid()}.partial"  # a reader without the lock never sees half a file
    docs.save(tmp)
    os.replace(tmp, cache)
    os.replace(tmp + ".json", cache + ".json")
    return docs


@contextlib.contextmanager
def _exclusive_lock(path: str):
  """An advisory lock on `path` (created), held for the block; where the file system offers
  no locks, the block runs unlocked (each process then builds its own copy)."""
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass
    try:
      yield
    finally:
      try:
        fcntl.flock(f, fcntl.LOCK_UN)
      except OSError:
        pass
