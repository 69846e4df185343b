"""Tests for parsing model turns into search / answer / invalid actions."""

import json
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from rag_r1_jax.rollout import search_call
from rag_r1_jax.eval.answer_metrics import extract_last_answer as extract_answer
from rag_r1_jax.rollout.search_call import Action, parse_action

MQ = dict(mode="mq", max_queries_per_call=3, max_query_chars=64)
SQ = dict(mode="sq", max_queries_per_call=3, max_query_chars=64)


def _mq(body: str, **kw) -> Action:
  return parse_action(f"<think> t </think><search>{body}</search>", **{**MQ, **kw})


@pytest.mark.parametrize("body,queries", [
    (" Abelo Kanti, Mora Tesk ", ("Abelo Kanti", "Mora Tesk")),
    ("a,b,,c,", ("a", "b", "c")),
    ('"Paris, Texas", Berlin', ("Paris, Texas", "Berlin")),
    ("'Paris, Texas', 'Berlin'", ("Paris, Texas", "Berlin")),
    ("\u201cParis, Texas\u201d, Berlin", ("Paris, Texas", "Berlin")),
    ("X's height, Y's height", ("X's height", "Y's height")),
    ("f(a, b), g[c, d], h{e, f}", ("f(a, b)", "g[c, d]", "h{e, f}")),
    ('["q one", "q, two"]', ("q one", "q, two")),
    ('{"query": ["a", "b"]}', ("a", "b")),
    ("['a, b', 'c']", ("a, b", "c")),
    ("[a, b]", ("a", "b")),
    ("line one\nline, two\n\n", ("line one", "line, two")),
    ("a, b, a, A", ("a", "b", "A")),
    ('"a, b', ('"a', "b")),  # an unclosed quote is an ordinary character
    ("(a, b", ("(a", "b")),  # so is an unclosed bracket
    ("  many   spaces\there ", ("many spaces here",)),
    ('[1, 2.5, true, null, "x"]', ("1", "2.5", "x")),
])
def test_mq_query_formats(body, queries):
  action = _mq(body)
  assert action == Action("search", queries)


def test_sq_body_is_one_query():
  action = parse_action("<search> Paris, Texas </search>", **SQ)
  assert action == Action("search", ("Paris, Texas",))
  action = parse_action('<search> "a, b" </search>', **SQ)
  assert action.queries == ("a, b",)


def test_too_many_queries_keeps_first_and_notes():
  action = _mq(", ".join(f"q{i}" for i in range(50)))
  assert action.kind == "search"
  assert action.queries == ("q0", "q1", "q2")
  assert action.problem == "only the first 3 of 50 queries were searched (at most 3 per search)"


def test_long_query_is_cut_and_noted():
  action = _mq("x" * 100_000 + ", short", max_query_chars=10)
  assert action.queries == ("x" * 10, "short")
  assert action.problem == "1 query was cut to 10 characters"
  action = _mq("a" * 20 + "\n" + "b" * 20 + "\nc\nd", max_query_chars=5)
  assert action.queries == ("aaaaa", "bbbbb", "c")
  assert action.problem == ("only the first 3 of 4 queries were searched (at most 3 per search); "
                            "2 queries were cut to 5 characters")


@pytest.mark.parametrize("body", ["", "   ", ",,,", '""', "[]", '[""]', "\n\n", "{}"])
def test_empty_search_is_invalid_with_problem(body):
  assert _mq(body) == Action("invalid", problem="the search query was empty")


@pytest.mark.parametrize("text,expected", [
    ("<think> x </think><answer> Vormsa </answer>", Action("answer", answer="Vormsa")),
    ("<answer></answer>", Action("answer", answer="")),
    ("<search> a </search> then <answer> b </answer>", Action("answer", answer="b")),
    ("<answer> b </answer> then <search> a </search>", Action("search", ("a",))),
    ("<answer> 1 </answer><answer> 2 </answer>", Action("answer", answer="2")),
    ("<search> a <search> b </search>", Action("search", ("b",))),  # nearest opening tag
    ("<answer> x <answer> y </answer> </answer>", Action("answer", answer="y")),
    ("<answer>London</answer> blah </answer>", Action("answer", answer="London")),
    ("no tags at all", Action("invalid")),
    ("<search> unclosed", Action("invalid")),
    ("</search> <search>", Action("invalid")),
    ("<search> q </answer>", Action("invalid")),
    ("<search> q </search> </answer>", Action("search", ("q",))),
])
def test_last_complete_tag_wins(text, expected):
  assert parse_action(text, **MQ) == expected


def test_extract_answer():
  assert extract_answer("<think> a </think><answer> Beijing </answer>") == "Beijing"
  assert extract_answer("<answer> a </answer> x <answer> b\n</answer>") == "b"
  assert extract_answer("<answer> unclosed") is None
  assert extract_answer("<search> q </search>") is None
  assert extract_answer("") is None


def test_split_top_level_is_linear_on_adversarial_input():
  text = "(" * 50_000 + "'" * 50_000 + '"' * 50_000 + ",a"
  parts = search_call.split_top_level(text)
  assert parts[-1] == "a" and len(parts) == 2


@pytest.mark.parametrize("mode,body", [("mq", '"' * (2 << 20)), ("sq", "' " * (1 << 20))],
                         ids=["mq", "sq"])
def test_megabytes_of_quotes_parse_in_linear_time(mode, body):
  """2 MB of quotes: ~1.5 s on an idle core; peeling the query's quote layers by slicing (a
  copy per layer) took ~40 s."""
  start = time.perf_counter()
  action = parse_action(f"<search>{body}</search>", mode=mode, max_queries_per_call=3,
                        max_query_chars=100)
  assert time.perf_counter() - start < 20  # generous: shared CI cores
  assert action.kind == "invalid" and action.problem == "the search query was empty"


def _peel_by_slicing(query: str) -> str:
  """clean_query's rule written the obvious (quadratic) way, to compare with."""
  q = " ".join(query.split())
  while len(q) >= 2 and q[0] in search_call._QUOTE_PAIRS and \
      q[-1] == search_call._QUOTE_PAIRS[q[0]]:
    q = q[1:-1].strip()
  return q


@settings(max_examples=1000, deadline=None, database=None, derandomize=True)
@given(st.text(st.sampled_from(['"', "'", "\u201c", "\u201d", "`", " ", "\n", "a", "(", ")"]),
               max_size=12))
def test_property_clean_query_peels_like_slicing(query):
  assert search_call.clean_query(query) == _peel_by_slicing(query)


def _check(action: Action, mode: str, max_queries: int, max_chars: int) -> None:
  assert isinstance(action, Action)
  assert action.kind in ("search", "answer", "invalid")
  if action.kind == "search":
    assert 1 <= len(action.queries) <= (1 if mode == "sq" else max_queries)
    assert len(set(action.queries)) == len(action.queries)
    for q in action.queries:
      assert isinstance(q, str) and q and q == q.strip() and len(q) <= max_chars
    assert action.answer is None
  elif action.kind == "answer":
    assert isinstance(action.answer, str) and action.queries == () and action.problem is None
  else:
    assert action.queries == () and action.answer is None


_TAGS = ["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>",
         "<information>", "</information>", "<search", "search>"]
_PIECES = _TAGS + [",", ", ", "\n", '"', "'", "\u201c", "\u201d", "[", "]", "(", ")", "{", "}",
                   '["a", "b"]', '["a", ', '{"query": ', " ", "q", "Abelo Kanti", "X's",
                   "\u00e9\u4e2d\U0001f600", "\\", "null", "1"]
_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
_PARAMS = st.tuples(st.sampled_from(["mq", "sq"]), st.integers(1, 5), st.integers(1, 80))


@settings(max_examples=4000, **_SETTINGS)
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join), _PARAMS)
def test_property_tag_soup(text, params):
  mode, max_queries, max_chars = params
  action = parse_action(text, mode=mode, max_queries_per_call=max_queries,
                        max_query_chars=max_chars)
  _check(action, mode, max_queries, max_chars)


@settings(max_examples=3000, **_SETTINGS)
@given(st.text(max_size=200), st.sampled_from(["", "<search>", "<answer>"]),
       st.sampled_from(["", "</search>", "</answer>"]), _PARAMS)
def test_property_random_unicode(body, open_tag, close_tag, params):
  mode, max_queries, max_chars = params
  action = parse_action(open_tag + body + close_tag, mode=mode, max_queries_per_call=max_queries,
                        max_query_chars=max_chars)
  _check(action, mode, max_queries, max_chars)
  if open_tag == "<answer>" and close_tag == "</answer>" and "</answer>" not in body:
    assert action == Action("answer", answer=body[body.rfind("<answer>") + 8:].strip()
                            if "<answer>" in body else body.strip())


@settings(max_examples=3000, **_SETTINGS)
@given(st.lists(st.one_of(st.text(max_size=12), st.integers(0, 100_000).map(lambda n: "x" * n),
                          st.sampled_from(["", " ", '"', "'"])), max_size=50),
       st.sampled_from(["comma", "lines", "json", "broken_json"]), _PARAMS)
def test_property_many_and_huge_queries(queries, layout, params):
  mode, max_queries, max_chars = params
  if layout == "comma":
    body = ", ".join(queries)
  elif layout == "lines":
    body = "\n".join(queries)
  elif layout == "json":
    body = json.dumps(queries)
  else:
    body = json.dumps(queries)[:-1] + ",]"
  action = parse_action(f"<search>{body}</search>", mode=mode, max_queries_per_call=max_queries,
                        max_query_chars=max_chars)
  _check(action, mode, max_queries, max_chars)
  if layout == "json" and mode == "mq":
    cleaned = list(dict.fromkeys(
        c[:max_chars].rstrip() for c in map(search_call.clean_query, queries) if c))
    if cleaned:
      assert action.queries == tuple(cleaned[:max_queries])
    else:
      assert action.kind == "invalid" and action.problem


@settings(max_examples=200, **_SETTINGS)
@given(st.text(max_size=300))
def test_property_extract_answer_never_raises(text):
  answer = extract_answer(text)
  assert answer is None or (isinstance(answer, str) and "</answer>" not in answer)
