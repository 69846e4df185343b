"""Readers for the raw data files behind the tfds builders, with errors that name file:line.

QA files are FlashRAG-layout JSONL: one object per line with `question` (non-empty string),
`golden_answers` (non-empty list of strings) and `id` (string or integer; missing ids become
'<split>_<row>'). SFT files are alpaca / LLaMA-Factory rows with `instruction`, `output` and
optional `input` and `system`, either a JSON array (.json) or JSONL (.jsonl).
"""

import json
import re
from typing import Any, Iterator

_SPACE = re.compile(r"\s*")


def _fail(path: str, line: int, message: str) -> ValueError:
  """A ValueError that points at the bad row."""
  return ValueError(f"{path}:{line}: {message}")


def _decode(data: bytes, path: str, first_line: int = 1) -> str:
  """UTF-8 `data` as text; a bad byte fails naming its line and column."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = data.rfind(b"\n", 0, e.start) + 1
    raise _fail(path, first_line + data.count(b"\n", 0, e.start),
                f"not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                f"{e.start - line_start + 1}); re-encode the file as UTF-8") from None


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed object) for each non-blank line of a JSONL file."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      line = _decode(raw, path, line_no)
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        raise _fail(path, line_no, f"bad JSON ({e.msg} at column {e.colno})") from None


def _iter_json_array(path: str) -> Iterator[tuple[int, Any]]:
  """(line number where it starts, parsed object) for each element of a top-level JSON array."""
  with open(path, "rb") as f:
    text = _decode(f.read(), path)
  decoder = json.JSONDecoder()
  pos = _SPACE.match(text, 0).end()
  if not text.startswith("[", pos):
    raise _fail(path, text.count("\n", 0, pos) + 1, "expected a JSON array of rows")
  pos = _SPACE.match(text, pos + 1).end()
  line, counted = 1, 0
  if text.startswith("]", pos):
    pos += 1
  else:
    while True:
      line += text.count("\n", counted, pos)
      counted = pos
      try:
        obj, pos = decoder.raw_decode(text, pos)
      except json.JSONDecodeError as e:
        raise _fail(path, e.lineno, f"bad JSON ({e.msg} at column {e.colno})") from None
      yield line, obj
      pos = _SPACE.match(text, pos).end()
      if text.startswith(",", pos):
        pos = _SPACE.match(text, pos + 1).end()
      elif text.startswith("]", pos):
        pos += 1
        break
      else:
        raise _fail(path, text.count("\n", 0, pos) + 1, "bad JSON (expected ',' or ']')")
  pos = _SPACE.match(text, pos).end()
  if pos != len(text):
    raise _fail(path, text.count("\n", 0, pos) + 1, "bad JSON (text after the array)")


def _require_object(path: str, line: int, row: Any) -> dict:
  """The row itself if it is a JSON object."""
  if not isinstance(row, dict):
    raise _fail(path, line, f"expected a JSON object, got {type(row).__name__}")
  return row


def read_qa_jsonl(path: str, split: str) -> list[dict]:
  """Validated QA rows {id, question, golden_answers} of a FlashRAG-layout JSONL file."""
  rows = []
  for line, row in _iter_jsonl(path):
    row = _require_object(path, line, row)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
      raise _fail(path, line, "missing or empty 'question' (a non-empty string)")
    golds = row.get("golden_answers")
    if (not isinstance(golds, list) or not golds
        or not all(isinstance(g, str) for g in golds)):
      raise _fail(path, line,
                  f"'golden_answers' must be a non-empty list of strings, got {golds!r}")
    row_id = row.get("id", f"{split}_{len(rows)}")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
      raise _fail(path, line, f"'id' must be a string or an integer, got {row_id!r}")
    rows.append({"id": str(row_id), "question": question, "golden_answers": golds})
  return rows


def read_sft_rows(path: str) -> list[dict]:
  """Validated SFT rows {instruction, input, output, system} of an alpaca JSON / JSONL file."""
  rows_iter = _iter_jsonl(path) if path.endswith(".jsonl") else _iter_json_array(path)
  rows = []
  for line, row in rows_iter:
    row = _require_object(path, line, row)
    out = {}
    for field, required in (("instruction", True), ("input", False), ("output", True),
                            ("system", False)):
      value = row.get(field, None if required else "")
      if not isinstance(value, str) or (required and not value):
        raise _fail(path, line, f"'{field}' must be a{' non-empty' * required} string, "
                    f"got {value!r}")
      out[field] = value
    if row.get("history"):
      raise _fail(path, line, "'history' (multi-turn alpaca rows) is not supported")
    rows.append(out)
  return rows
