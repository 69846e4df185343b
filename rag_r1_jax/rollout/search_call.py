"""Parses one model turn into an action: a search with its queries, a final answer, or invalid.

Host-side and pure Python; never raises on model output, and runs in linear time in the length
of the turn (a 100 KB turn is fine).

The action is taken from the LAST complete `<search>...</search>` or `<answer>...</answer>` in the
turn, whichever closes last (the engine stops generation right after either closing tag); the
opening tag paired with a closing tag is the nearest one before it. A turn with neither is
'invalid'.

Search bodies in 'mq' mode (RAG-R1's multi-query calls), tried in this order:
  1. a JSON list `["q1", "q2"]` (or a JSON object with a "query"/"queries" list);
     (an object without such a list holds no query);
  2. a bracketed list that is not JSON, `['q1', 'q2']` or `[q1, q2]`: its inside, as in 4;
  3. several non-empty lines: one query per line, commas inside a line are kept;
  4. the paper's comma form `q1, q2`, never split inside quotes ("...", '...', “...”, ‘...’)
     or brackets ((), [], {}); a quote or bracket that never closes is an ordinary character,
     and `'` opens a quote only at the start of a word (so "X's, Y's" splits at the comma).
In 'sq' mode (Search-R1's) the whole body is one query.
Every query is cleaned: surrounding quotes removed, runs of whitespace collapsed to one space.
Empty queries are dropped and duplicates removed (first occurrence kept). A query longer than
`max_query_chars` is cut to that length (noted in `problem`). More than `max_queries_per_call`
queries: the first N are kept and searched, and `problem` says so (the call is not rejected,
so the model still gets documents). A search with no query left is 'invalid' with a `problem`.
"""

import dataclasses
import json
import re
from typing import Literal

from rag_r1_jax.protocol import ANSWER_CLOSE, ANSWER_OPEN, SEARCH_CLOSE, SEARCH_OPEN

_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}"}
_CLOSING_BRACKETS = {v: k for k, v in _BRACKET_PAIRS.items()}
_WHITESPACE_RE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class Action:
  """One parsed turn.

  kind 'search': 1 <= len(queries) <= max_queries_per_call, each query non-empty and at most
  max_query_chars long; `problem` notes queries dropped or cut (the search still runs).
  kind 'answer': `answer` is the stripped answer text (possibly empty).
  kind 'invalid': no usable action; `problem` says why when a search tag was found but unusable.
  """
  kind: Literal["search", "answer", "invalid"]
  queries: tuple[str, ...] = ()
  answer: str | None = None
  problem: str | None = None


def last_complete_pair(text: str, open_tag: str, close_tag: str) -> tuple[int, int, int] | None:
  """(open start, body start, close start) of the last complete tag pair, or None.

  The pair opens at the last opening tag that some closing tag follows and closes at the first
  closing tag after it: '<answer>a</answer> b </answer>' has the body 'a'."""
  close = text.rfind(close_tag)
  if close < 0:
    return None
  start = text.rfind(open_tag, 0, close)
  if start < 0:
    return None
  body = start + len(open_tag)
  return start, body, text.find(close_tag, body)


def _last_action_body(text: str) -> tuple[str, str] | None:
  """('search' | 'answer', raw body) of whichever complete pair closes last, or None."""
  spans = []
  for kind, open_tag, close_tag in (("search", SEARCH_OPEN, SEARCH_CLOSE),
                                    ("answer", ANSWER_OPEN, ANSWER_CLOSE)):
    span = last_complete_pair(text, open_tag, close_tag)
    if span is not None:
      spans.append((span[2], kind, text[span[1]:span[2]]))
  if not spans:
    return None
  _, kind, body = max(spans)
  return kind, body


def _matching_brackets(text: str) -> dict[int, int]:
  """Index of each opening bracket -> index of its closing bracket (unmatched ones absent)."""
  matches, stack = {}, []
  for i, c in enumerate(text):
    if c in _BRACKET_PAIRS:
      stack.append(i)
    elif c in _CLOSING_BRACKETS and stack and text[stack[-1]] == _CLOSING_BRACKETS[c]:
      matches[stack.pop()] = i
  return matches


def _is_word_char(c: str) -> bool:
  return c.isalnum() or c == "_"


def _quote_closers(text: str) -> dict[str, list[int]]:
  """For each quote closer char, the sorted positions where it may close a quote."""
  positions: dict[str, list[int]] = {closer: [] for closer in set(_QUOTE_PAIRS.values())}
  for i, c in enumerate(text):
    if c in positions:
      if c == "'" and i + 1 < len(text) and _is_word_char(text[i + 1]):
        continue  # an apostrophe inside a word ("don't") never closes a quote
      positions[c].append(i)
  return positions


def split_top_level(text: str, separator: str = ",") -> list[str]:
  """Splits on `separator` outside matched quotes and brackets; unmatched ones are literal."""
  brackets = _matching_brackets(text)
  closers = _quote_closers(text)
  cursor = {c: 0 for c in closers}  # next candidate index into closers[c]; only moves forward
  parts, start, i = [], 0, 0
  while i < len(text):
    c = text[i]
    jump = brackets.get(i, -1)
    if jump < 0 and c in _QUOTE_PAIRS:
      opens_word = c != "'" or i == 0 or not _is_word_char(text[i - 1])
      if opens_word:
        closer, candidates = _QUOTE_PAIRS[c], closers[_QUOTE_PAIRS[c]]
        k = cursor[closer]
        while k < len(candidates) and candidates[k] <= i:
          k += 1
        cursor[closer] = k
        if k < len(candidates):
          jump = candidates[k]
    if jump > i:
      i = jump + 1
      continue
    if c == separator:
      parts.append(text[start:i])
      start = i + 1
    i += 1
  parts.append(text[start:])
  return parts


def clean_query(query: str) -> str:
  """Whitespace collapsed, surrounding quotes (repeatedly) and whitespace stripped.

  The layers are peeled by moving two indices (slicing each layer off would copy the query
  once per layer: quadratic on a long run of quotes).
  """
  q = _WHITESPACE_RE.sub(" ", query).strip()
  start, end = 0, len(q)
  while end - start >= 2 and q[start] in _QUOTE_PAIRS and q[end - 1] == _QUOTE_PAIRS[q[start]]:
    start, end = start + 1, end - 1
    if start < end and q[start] == " ":  # whitespace is collapsed: at most one space a side
      start += 1
    if start < end and q[end - 1] == " ":
      end -= 1
  return q[start:end]


def _json_queries(body: str) -> list[str] | None:
  """Queries of a JSON list (or object with a query list), None when the body is not one."""
  try:
    value = json.loads(body)
  except (ValueError, RecursionError):
    return None
  if isinstance(value, dict):
    value = value.get("query", value.get("queries", []))
  if isinstance(value, str):
    return [value]
  if not isinstance(value, list):
    return None
  return [str(v) for v in value
          if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def split_queries(body: str, mode: Literal["mq", "sq"]) -> list[str]:
  """Raw (uncleaned) queries of a search body, following the module docstring's rules."""
  text = body.strip()
  if mode == "sq":
    return [text]
  if len(text) >= 2 and text[0] in "[{" and text[-1] in "]}":
    parsed = _json_queries(text)
    if parsed is not None:
      return parsed
    if text[0] == "[" and text[-1] == "]":
      text = text[1:-1]
  lines = [line for line in text.splitlines() if line.strip()]
  if len(lines) > 1:
    return lines
  return split_top_level(text)


def parse_search_body(body: str, *, mode: Literal["mq", "sq"], max_queries_per_call: int,
                      max_query_chars: int) -> Action:
  """The Action for the body of a `<search>` call (kind 'search', or 'invalid' when empty)."""
  assert mode in ("mq", "sq"), mode
  assert max_queries_per_call >= 1 and max_query_chars >= 1
  limit = 1 if mode == "sq" else max_queries_per_call
  queries: list[str] = []
  seen: set[str] = set()
  num_cut = 0
  for raw in split_queries(body, mode):
    q = clean_query(raw)
    if not q:
      continue
    if len(q) > max_query_chars:
      q = q[:max_query_chars].rstrip()
      num_cut += 1
    if q not in seen:
      seen.add(q)
      queries.append(q)
  if not queries:
    return Action("invalid", problem="the search query was empty")
  problems = []
  if len(queries) > limit:
    problems.append(f"only the first {limit} of {len(queries)} queries were searched "
                    f"(at most {limit} per search)")
    queries = queries[:limit]
  if num_cut:
    noun = "query was" if num_cut == 1 else "queries were"
    problems.append(f"{num_cut} {noun} cut to {max_query_chars} characters")
  return Action("search", tuple(queries), problem="; ".join(problems) or None)


def parse_action(turn_text: str, *, mode: Literal["mq", "sq"], max_queries_per_call: int,
                 max_query_chars: int) -> Action:
  """The action of one generated turn; see the module docstring for the rules."""
  found = _last_action_body(turn_text)
  if found is None:
    return Action("invalid")
  kind, body = found
  if kind == "answer":
    return Action("answer", answer=body.strip())
  return parse_search_body(body, mode=mode, max_queries_per_call=max_queries_per_call,
                           max_query_chars=max_query_chars)
