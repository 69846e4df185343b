"""The Wikipedia-extract task's scripted demonstrations, and the task as registered."""

import dataclasses
import functools

import pytest

from configs import common
from rag_r1_jax import tasks
from rag_r1_jax.eval import answer_metrics
from rag_r1_jax.retrieval.base import Document, ExactRetriever, Retriever
from rag_r1_jax.rollout import observation, search_call
from rag_r1_jax.tasks.demonstrations import Segment, trajectory_text
from rag_r1_jax.tasks.wiki import demonstrations as wiki_demos
from rag_r1_jax.tasks.wiki import questions as wiki_questions
from tests.tasks.wiki.test_questions import ARTICLES, _arts


@functools.lru_cache(maxsize=None)
def _retriever():
  return ExactRetriever(wiki_questions.documents(_arts()))


@pytest.mark.parametrize("mode,kind,searches", [("mq", "single", 1), ("mq", "pair", 1),
                                                ("sq", "single", 1), ("sq", "pair", 2)])
def test_teacher_trajectories_parse_with_the_engine_and_score_em_1(mode, kind, searches):
  questions = wiki_questions.wiki_questions(_arts(), "train", kind)
  trajectories = wiki_demos.trajectories(questions, _retriever(), mode=mode, topk=3)
  kept = [(q, t) for q, t in zip(questions, trajectories) if t is not None]
  assert len(kept) >= 0.5 * len(questions), (len(kept), len(questions))
  for q, segments in kept:
    policy = [s.text for s in segments if s.role == "policy"]
    assert len(policy) == searches + 1
    asked = []
    for text in policy[:-1]:
      action = search_call.parse_action(text, mode=mode, max_queries_per_call=3,
                                        max_query_chars=512)
      assert action.kind == "search" and action.problem is None, text
      asked += action.queries
    assert asked == [wiki_questions.search_query(d) for d in q.descriptions]
    action = search_call.parse_action(policy[-1], mode=mode, max_queries_per_call=3,
                                      max_query_chars=512)
    assert action.kind == "answer"
    assert answer_metrics.exact_match(action.answer, q.golden_answers) == 1.0
    full = trajectory_text(segments)
    assert answer_metrics.exact_match(answer_metrics.extract_last_answer(full),
                                      q.golden_answers) == 1.0
    # Observations are the engine's own text for the teacher's actual results.
    info = [s.text for s in segments if s.role == "information"]
    assert len(info) == searches


def test_mq_pair_trajectory_exact():
  q = next(q for q in wiki_questions.wiki_questions(_arts(), "train", "pair")
           if wiki_demos.trajectories([q], _retriever(), mode="mq", topk=2)[0])
  names = [wiki_questions.search_query(d) for d in q.descriptions]
  info = observation.information_block(names, _retriever().retrieve(names, 2), "mq", None, 1000)
  (a, b), (da, db) = q.titles, q.descriptions
  assert wiki_demos.trajectories([q], _retriever(), mode="mq", topk=2)[0] == [
      Segment(f'<think> I need the article described as "{da}" and "{db}" </think>'
              f"<search> {names[0]}, {names[1]} </search>", "policy"),
      Segment(info, "information"),
      Segment(f'<think> "{da}" is {a}; "{db}" is {b} </think><answer> {a} and {b} </answer>',
              "policy")]


def test_a_missed_article_or_an_unparsable_query_drops_the_question():
  class Elsewhere(Retriever):
    def retrieve(self, queries, topk):
      return [[Document("nowhere", "Nowhere", "nothing here")] for _ in queries]

  questions = wiki_questions.wiki_questions(_arts(), "train", "pair")[:5]
  assert wiki_demos.trajectories(questions, Elsewhere(), mode="sq", topk=3) == [None] * 5
  solved = next(q for q in wiki_questions.wiki_questions(_arts(), "train", "single")
                if wiki_demos.trajectories([q], _retriever(), mode="mq", topk=3)[0])
  quoted = dataclasses.replace(solved, descriptions=(f'"{solved.descriptions[0]}"',))
  assert wiki_demos.trajectories([quoted], _retriever(), mode="mq", topk=3) == [None]
  assert wiki_demos.trajectories([solved], _retriever(), mode="mq", topk=3,
                                           max_query_chars=5) == [None]


def test_wiki_task_registers_pairs_and_its_demonstrations(capsys):
  config = common.base_config()
  config.data.source = "wiki_extracts"
  config.data.wiki_articles = ARTICLES
  config.rollout.mode = "mq"
  task = tasks.get(config)
  evals = task.eval_datasets()
  assert set(evals) == {"wiki", "wiki_pairs"} and evals["wiki_pairs"]
  train = task.train_rows()
  assert {r["id"].startswith("wiki-pair-") for r in train} == {True, False}
  kept = task.demonstrations(_retriever(), None, "paper_mq")
  assert "sft: demonstrations solved single " in capsys.readouterr().out
  assert kept and all(prompt.startswith("Answer the given question.") for prompt, _ in kept)
