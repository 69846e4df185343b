"""The observation texts the rollout engine appends to a trajectory after each model turn.

Formats follow the reference code:
  - Search-R1 single-query ('sq'): `Doc 1(Title: "t") text\\nDoc 2(Title: "t") text` (the title
    keeps the quotes of the corpus's first contents line, as Search-R1's `_passages2string`).
  - RAG-R1 multi-query ('mq'): `json.dumps({"query": [...], "documents": [...]}, indent=2)`
    (`json_indent=0`: the same object on one line, `{"query": [...], "documents": [...]}`,
    which saves ~20 tokens per block for small-context models), one string per query made of `Doc 1: "t"\\ntext\\nDoc 2: ...` (RAG-R1's `_passages2string`;
    non-ASCII characters are kept as they are, not \\u-escaped).
Each query's document string is cut to `max_obs_length` tokens by the given `truncate` (in mq
mode its JSON-escaped form is cut, so that escapes such as `\\u0001` count against the limit);
the body is wrapped as Search-R1 does: `"\\n\\n<information>" + body + "</information>\\n\\n"`.
Retrieved text and queries cannot close or open the protocol's blocks: a tag such as
`</information>` inside them is written `&lt;/information&gt;`; lone surrogates become U+FFFD.
"""

import json
import os
import re
from typing import Callable, Literal, Sequence

from rag_r1_jax.protocol import INFORMATION_CLOSE, INFORMATION_OPEN
from rag_r1_jax.retrieval.base import Document, clean_text


# Search-R1's fixed observation for a turn with neither a search nor an answer.
INVALID_ACTION_TEXT = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.\n")

# After max_turns searches, a further search gets this instead of documents.
BUDGET_EXHAUSTED_TEXT = (
    "\nMy search budget is used up, so I cannot search again. I should give the final "
    "answer between <answer> and </answer> now.\n")

Truncate = Callable[[str, int], str]


_PROTOCOL_TAG_RE = re.compile(r"<(\s*/?\s*(?:information|search|answer|think)\s*)>",
                              re.IGNORECASE)


def neutralize(text: str) -> str:
  """Retrieved or echoed text made inert: protocol tags escaped, lone surrogates replaced."""
  return _PROTOCOL_TAG_RE.sub(r"&lt;\1&gt;", clean_text(text))


def format_docs_sq(docs: Sequence[Document]) -> str:
  """Search-R1's document lines, `Doc i(Title: "t") text\\n` each."""
  return "".join(f'Doc {i}(Title: "{neutralize(d.title)}") {neutralize(d.text)}\n'
                 for i, d in enumerate(docs, 1))


def format_docs_mq(docs: Sequence[Document]) -> str:
  """RAG-R1's document string for one query, `Doc i: "t"\\ntext` lines joined by newlines."""
  return "\n".join(f'Doc {i}: "{neutralize(d.title)}"\n{neutralize(d.text)}'
                   for i, d in enumerate(docs, 1))


def _cut(text: str, truncate: Truncate | None, max_obs_length: int) -> str:
  return text if truncate is None else truncate(text, max_obs_length)


def _json_escaped_length(c: str) -> int:
  """Characters `json.dumps(..., ensure_ascii=False)` writes for the character c."""
  if c in '"\\\n\r\t\b\f':
    return 2
  return 6 if c < " " else 1


def cut_escaped(text: str, truncate: Truncate, max_obs_length: int) -> str:
  """The longest prefix of `text` whose JSON escape lies within `truncate(escape, n)`.

  So the string the model reads inside the JSON observation holds at most n tokens, however
  many characters escaping adds; the cut never splits an escape sequence.
  """
  escaped = json.dumps(text, ensure_ascii=False)[1:-1]
  cut = truncate(escaped, max_obs_length)
  if cut == escaped:
    return text
  budget = len(os.path.commonprefix([cut, escaped]))
  used = 0
  for i, c in enumerate(text):
    used += _json_escaped_length(c)
    if used > budget:
      return text[:i]
  return text


def information_body(queries: Sequence[str], docs_per_query: Sequence[Sequence[Document]],
                     mode: Literal["mq", "sq"], truncate: Truncate | None,
                     max_obs_length: int, json_indent: int = 2) -> str:
  """The text between <information> and </information> for one search call.

  `json_indent` (mq only): the JSON's indent; 0 writes it on one line.
  """
  assert len(queries) == len(docs_per_query), (len(queries), len(docs_per_query))
  assert mode in ("mq", "sq"), mode
  if mode == "sq":
    assert len(queries) == 1, f"sq mode searches one query per call, got {len(queries)}"
    return _with_source(queries[0], docs_per_query[0], lambda: _cut(
        format_docs_sq(docs_per_query[0]).strip(), truncate, max_obs_length))
  cut = _cut if truncate is None else cut_escaped
  documents = [_with_source(q, docs, lambda docs=docs: cut(
      format_docs_mq(docs).strip(), truncate, max_obs_length))
      for q, docs in zip(queries, docs_per_query)]
  return json.dumps({"query": [neutralize(q) for q in queries], "documents": documents},
                    indent=json_indent or None, ensure_ascii=False)


def _with_source(query: str, docs: Sequence[Document], fn: Callable[[], str]) -> str:
  """fn(), with an error that names the query and documents when the tokenizer fails."""
  try:
    return fn()
  except (TypeError, ValueError) as e:
    ids = ", ".join(repr(d.id) for d in docs)
    raise ValueError(f"cannot tokenize the documents [{ids}] retrieved for the query "
                     f"{query!r:.100}: {type(e).__name__}: {e}") from e


def information_block(queries: Sequence[str], docs_per_query: Sequence[Sequence[Document]],
                      mode: Literal["mq", "sq"], truncate: Truncate | None,
                      max_obs_length: int, note: str | None = None,
                      json_indent: int = 2) -> str:
  """The full observation for a search call, ready to append to the model's context.

  `truncate(text, n)` cuts text to at most n tokens (None: no cut). `note` (an
  `Action.problem` of a search that still ran) opens the body as `Note: ...` on its own line.
  """
  body = information_body(queries, docs_per_query, mode, truncate, max_obs_length, json_indent)
  if note:
    body = f"Note: {note}.\n{body}"
  return f"\n\n{INFORMATION_OPEN}{body}{INFORMATION_CLOSE}\n\n"


def problem_observation(problem: str) -> str:
  """The observation for an unusable search call (`Action.problem` of an 'invalid' action)."""
  return (f"\nMy previous search is invalid: {problem}. If I want to search, I should put the "
          "query between <search> and </search>. Let me try again.\n")


def invalid_action_observation(problem: str | None = None) -> str:
  """The observation for an 'invalid' action: its problem if it has one, else Search-R1's text."""
  return problem_observation(problem) if problem else INVALID_ACTION_TEXT


def budget_exhausted_observation() -> str:
  """The observation for a search attempted after `max_turns` searches."""
  return BUDGET_EXHAUSTED_TEXT


def token_truncate(encode: Callable[[str], list[int]],
                   decode: Callable[[list[int]], str]) -> Truncate:
  """A `truncate` from a tokenizer's encode/decode: keeps the first n tokens of the text."""
  def truncate(text: str, max_tokens: int) -> str:
    ids = encode(text)
    return text if len(ids) <= max_tokens else decode(ids[:max_tokens])
  return truncate
