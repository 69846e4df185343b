"""The Wikipedia-extract questions: single and pair, train and test articles apart."""

import functools

import pytest

from rag_r1_jax.eval import answer_metrics
from rag_r1_jax.tasks.wiki import questions as wiki_questions

ARTICLES = 400


@functools.lru_cache(maxsize=None)
def _arts():
  return wiki_questions.articles(ARTICLES)


def test_pair_questions_need_two_articles_and_accept_either_order():
  pairs = wiki_questions.wiki_questions(_arts(), "test", "pair")
  singles = wiki_questions.wiki_questions(_arts(), "test", "single")
  assert len(pairs) >= len(singles) // 2 - 5 and pairs
  titles = {q.titles[0] for q in singles}
  for q in pairs:
    a, b = q.titles
    assert {a, b} <= titles and a != b and q.descriptions[0] != q.descriptions[1]
    assert q.golden_answers == [f"{a} and {b}", f"{b} and {a}"]
    assert answer_metrics.exact_match(f"{b} and {a}", q.golden_answers) == 1.0
    assert all(f'"{d}"' in q.question for d in q.descriptions)
    assert [_arts()[int(i)].title for i in q.doc_ids] == list(q.titles)
  train = {t for k in wiki_questions.KINDS
           for q in wiki_questions.wiki_questions(_arts(), "train", k) for t in q.titles}
  assert train and not train & {t for q in pairs for t in q.titles}
  with pytest.raises(ValueError, match="kind 'triple'"):
    wiki_questions.wiki_questions(_arts(), "test", "triple")


def test_search_query_drops_the_mq_separator():
  assert wiki_questions.search_query("Town in Kent, England") == "Town in Kent England"
