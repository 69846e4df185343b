"""Readers for the raw data files behind the tfds builders, with errors that name file and row.

QA files, by extension (each row becomes {id, question, golden_answers, data_source,
extra_info}):
- `.jsonl`: FlashRAG rows, one object per line: `question` (non-empty string),
  `golden_answers` (non-empty list of strings, or one string), `id` (string or integer; missing
  ids become '<split>_<row>'), optional `data_source` (default: the dataset's name) and
  `extra_info`.
- `.json`: the same rows as a JSON array (RAG-R1's RL question file).
- `.parquet`: Search-R1's rows (rag_r1_jax/data/search_r1_parquet.py says what comes from where).
Every bad row of a file is collected and reported together, the first as `path:line: reason`.

SFT files are alpaca / LLaMA-Factory rows with `instruction`, `output` and optional `input` and
`system`, either a JSON array (.json) or JSONL (.jsonl).
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
  for line_no, row, why in _line_rows(path):
    if why is not None:
      raise _fail(path, line_no, why)
    yield line_no, row


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


QA_EXTENSIONS = (".jsonl", ".json", ".parquet")
_MAX_LISTED_BAD_ROWS = 20


def _bad_rows_error(bad: list[tuple[str, str]]) -> ValueError:
  """One error for all bad rows ('where', 'why'): the first leads, up to 20 are listed."""
  (where, why), rest = bad[0], bad[1:_MAX_LISTED_BAD_ROWS]
  lines = [f"{where}: {why}"] + [f"  {w}: {r}" for w, r in rest]
  more = len(bad) - _MAX_LISTED_BAD_ROWS
  if more > 0:
    lines.append(f"  ... and {more} more")
  if len(bad) > 1:
    lines.insert(1, f"({len(bad)} bad rows in all; no row was used):")
  return ValueError("\n".join(lines))


def _answers(value: Any) -> list[str]:
  """golden_answers as a list: one string is a one-answer list (RAG-R1's RL file)."""
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, list) or not value or not all(isinstance(g, str) for g in value):
    raise ValueError(f"'golden_answers' must be a non-empty list of strings (or one string), "
                     f"got {value!r}")
  return value


def _qa_row(row: Any, index: int, split: str, default_source: str) -> dict:
  """A FlashRAG-layout row checked and normalised; ValueError says what is wrong."""
  if not isinstance(row, dict):
    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
  question = row.get("question")
  if not isinstance(question, str) or not question.strip():
    raise ValueError("missing or empty 'question' (a non-empty string)")
  golds = _answers(row.get("golden_answers"))
  row_id = row.get("id", f"{split}_{index}")
  if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
    raise ValueError(f"'id' must be a string or an integer, got {row_id!r}")
  source = row.get("data_source", default_source)
  if not isinstance(source, str) or not source.strip():
    raise ValueError(f"'data_source' must be a non-empty string, got {source!r}")
  extra = row.get("extra_info")
  return {"id": str(row_id), "question": question, "golden_answers": golds,
          "data_source": source.strip(),
          "extra_info": "" if extra is None else json.dumps(extra, ensure_ascii=False,
                                                            sort_keys=True)}


def _line_rows(path: str) -> Iterator[tuple[int, Any, str | None]]:
  """(line number, row, None) per non-blank JSONL line, or (line number, None, why) for a
  line that is not JSON."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      line = _decode(raw, path, line_no)
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line), None
      except json.JSONDecodeError as e:
        yield line_no, None, f"bad JSON ({e.msg} at column {e.colno})"


def read_qa_rows(path: str, split: str, default_source: str) -> list[dict]:
  """Validated QA rows of a FlashRAG .jsonl, a .json array or a Search-R1 .parquet file.

  Rows without their own `data_source` get `default_source`. Any bad row fails the whole file
  with every bad row named (file:line for JSON, file: row N for parquet, N from 0).
  """
  rows: list[dict] = []
  bad: list[tuple[str, str]] = []
  if path.endswith(".parquet"):
    from rag_r1_jax.data import search_r1_parquet
    for n, record in search_r1_parquet.iter_rows(path):
      try:
        rows.append(search_r1_parquet.qa_row(record, n, split, default_source))
      except ValueError as e:
        bad.append((f"{path}: row {n}", str(e)))
  elif path.endswith(".json"):
    for line, row in _iter_json_array(path):
      try:
        rows.append(_qa_row(row, len(rows) + len(bad), split, default_source))
      except ValueError as e:
        bad.append((f"{path}:{line}", str(e)))
  elif path.endswith(".jsonl"):
    for line_no, row, why in _line_rows(path):
      where = f"{path}:{line_no}"
      try:
        if why is not None:
          raise ValueError(why)
        rows.append(_qa_row(row, len(rows) + len(bad), split, default_source))
      except ValueError as e:
        bad.append((where, str(e)))
  else:
    raise ValueError(f"{path}: unknown QA file type; expected one of {QA_EXTENSIONS}")
  if bad:
    raise _bad_rows_error(bad)
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
