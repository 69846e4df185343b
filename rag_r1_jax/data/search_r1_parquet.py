"""Search-R1's parquet rows as QA rows {id, question, golden_answers, data_source, extra_info}.

Search-R1's `scripts/data_process/nq_search.py` (and its merged nq_hotpotqa files) write one
row per question with `data_source` (e.g. 'nq', 'hotpotqa'), `prompt` ([{role, content}], the
question wrapped in its instruction template), `ability`, `reward_model` {style, ground_truth
{target: [answers]}} and `extra_info` {split, index}; the FlashRAG columns it started from
(`id`, `question`, `golden_answers`) are usually still there. What is taken from where:

- question: the `question` column when it is a non-empty string; otherwise the last user
  message of `prompt`, cut after its last "Question:" (the template ends with
  "Question: {question}"). A user message without that marker is taken whole, unless it holds
  the template's tags (<answer>, <search>), which would mean the marker is missing.
- golden_answers: `reward_model.ground_truth.target` (what Search-R1 rewards against), else the
  `golden_answers` column; a single string counts as a one-answer list.
- id: the `id` column, else '<split>_<extra_info.index>', else '<split>_<row>'.
- data_source: the `data_source` column, else the caller's default (the dataset's name).
- extra_info: the `extra_info` column as JSON text ('' when absent).

Rows are numbered from 0 in file order (as pyarrow and pandas number them).
"""

import json
import re
from typing import Any, Iterator

from rag_r1_jax import protocol

_QUESTION_MARK = re.compile(r"Question:\s*")
_TEMPLATE_TAGS = (protocol.ANSWER_OPEN, protocol.SEARCH_OPEN)


class RowError(ValueError):
  """A row that cannot become a QA row; the message says why."""


def iter_rows(path: str, batch_rows: int = 4096) -> Iterator[tuple[int, dict]]:
  """(row number, row as a dict) for each row of a parquet file, read a batch at a time."""
  import pyarrow.parquet as pq
  try:
    parquet = pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises several types for a file that is not parquet
    raise ValueError(f"{path}: not a readable parquet file ({e})") from None
  row = 0
  for batch in parquet.iter_batches(batch_size=batch_rows):
    for record in batch.to_pylist():
      yield row, record
      row += 1


def question_from_prompt(prompt: Any) -> str:
  """The question inside a Search-R1 `prompt` ([{role, content}]); RowError if none."""
  if not isinstance(prompt, list) or not prompt:
    raise RowError(f"'prompt' must be a non-empty list of {{role, content}} messages, "
                   f"got {_short(prompt)}")
  users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
  if not users or not isinstance(users[-1].get("content"), str):
    raise RowError("'prompt' has no user message with text content")
  content = users[-1]["content"]
  marks = list(_QUESTION_MARK.finditer(content))
  if marks:
    question = content[marks[-1].end():].strip()
  elif any(tag in content for tag in _TEMPLATE_TAGS):
    raise RowError("the user message looks like a Search-R1 template but has no "
                   "'Question:' to take the question from")
  else:
    question = content.strip()
  if not question:
    raise RowError("the user message's question is empty")
  return question


def _answers(value: Any, field: str) -> list[str]:
  if isinstance(value, str):
    value = [value]
  if (not isinstance(value, list) or not value
      or not all(isinstance(v, str) and v.strip() for v in value)):
    raise RowError(f"'{field}' must be a non-empty string or list of strings, "
                   f"got {_short(value)}")
  return list(value)


def golden_answers(record: dict) -> list[str]:
  """The row's answers: reward_model.ground_truth.target, else golden_answers."""
  ground_truth = (record.get("reward_model") or {}).get("ground_truth")
  if isinstance(ground_truth, dict) and ground_truth.get("target") is not None:
    return _answers(ground_truth["target"], "reward_model.ground_truth.target")
  if record.get("golden_answers") is not None:
    return _answers(record["golden_answers"], "golden_answers")
  raise RowError("no answers: neither 'reward_model.ground_truth.target' nor "
                 "'golden_answers' is set")


def qa_row(record: dict, row: int, split: str, default_source: str) -> dict:
  """One Search-R1 parquet row as a QA row (see the module docstring); RowError if unusable."""
  question = record.get("question")
  if not isinstance(question, str) or not question.strip():
    question = question_from_prompt(record.get("prompt"))
  extra = record.get("extra_info")
  row_id = record.get("id")
  if row_id is None:
    index = extra.get("index") if isinstance(extra, dict) else None
    row_id = f"{split}_{index if index is not None else row}"
  source = record.get("data_source")
  if source is None:
    source = default_source
  if not isinstance(source, str) or not source.strip():
    raise RowError(f"'data_source' must be a non-empty string, got {_short(source)}")
  return {"id": str(row_id), "question": question.strip(), "golden_answers": golden_answers(record),
          "data_source": source.strip(),
          "extra_info": "" if extra is None else json.dumps(extra, ensure_ascii=False,
                                                            sort_keys=True, default=str)}


def _short(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."
