"""Tests for the programmatic teacher's trajectories and the paper's sub-sample cutting."""

import pytest

from rag_r1_jax.data import synthetic_world as sw
from rag_r1_jax.data import teacher
from rag_r1_jax.data.teacher import Segment
from rag_r1_jax.eval import answer_metrics
from rag_r1_jax.retrieval.base import Document, ExactRetriever, Retriever
from rag_r1_jax.rollout import observation, search_call


@pytest.fixture(scope="module")
def world() -> sw.World:
  return sw.make_world(1, 80)


@pytest.fixture(scope="module")
def retriever(world) -> ExactRetriever:
  return ExactRetriever(world.passages)


def _birth_year(world, name):
  return world.entity(name).birth_year


def test_mq_comparison_exact(world, retriever):
  q = [q for q in world.split_questions("test", ["comparison"])
       if q.question.startswith("Who was born earlier")][0]
  a, b = q.rounds("mq")[0]
  segments = teacher.teacher_trajectory(world, q, retriever, mode="mq", topk=3)
  info = observation.information_block([a, b], retriever.retrieve([a, b], 3), "mq", None, 1000)
  assert segments == [
      Segment(f"<think> need birth year </think><search> {a}, {b} </search>", "policy"),
      Segment(info, "information"),
      Segment(f"<think> {a} was born {_birth_year(world, a)}; {b} was born "
              f"{_birth_year(world, b)} </think><answer> {q.golden_answers[0]} </answer>",
              "policy")]


def test_sq_bridge_exact(world, retriever):
  q = [q for q in world.split_questions("test", ["bridge"])
       if q.question.startswith("In which city is the company")][0]
  (person,), (company,) = q.rounds("sq")
  segments = teacher.teacher_trajectory(world, q, retriever, mode="sq", topk=3)
  info = [observation.information_block([n], retriever.retrieve([n], 3), "sq", None, 1000)
          for n in (person, company)]
  hq = world.entity(company).headquarters
  assert segments == [
      Segment(f"<think> need employer </think><search> {person} </search>", "policy"),
      Segment(info[0], "information"),
      Segment(f"<think> {person} works for {company}; need headquarters </think>"
              f"<search> {company} </search>", "policy"),
      Segment(info[1], "information"),
      Segment(f"<think> {company} is based in {hq} </think><answer> {hq} </answer>", "policy")]


@pytest.mark.parametrize("mode", ["sq", "mq"])
def test_every_question_gets_a_parseable_correct_trajectory(world, retriever, mode):
  questions = list(world.questions)
  retriever.stats.reset()
  trajectories = teacher.teacher_trajectories(world, questions, retriever, mode=mode, topk=3)
  assert retriever.stats.calls == (3 if mode == "sq" else 2)  # one batched call per round
  assert all(t is not None for t in trajectories)
  for q, segments in zip(questions, trajectories):
    rounds = q.rounds(mode)
    policy = [s for s in segments if s.role == "policy"]
    assert [s.role for s in segments] == ["policy", "information"] * len(rounds) + ["policy"]
    for text, queries in zip(policy, rounds):
      action = search_call.parse_action(text.text, mode=mode, max_queries_per_call=3,
                                        max_query_chars=512)
      assert action == search_call.Action("search", queries)
    final = search_call.parse_action(policy[-1].text, mode=mode, max_queries_per_call=3,
                                     max_query_chars=512)
    assert final.kind == "answer" and final.answer == q.golden_answers[0]
    assert answer_metrics.extract_last_answer(teacher.trajectory_text(segments)) == q.golden_answers[0]
    assert all(s.text.startswith("\n\n<information>") for s in segments if s.role != "policy")


def test_lost_facts_drop_the_trajectory(world, retriever):
  q = world.split_questions("train", ["single"])[0]
  cut = lambda text, n: text[:n]
  assert teacher.teacher_trajectory(world, q, retriever, mode="sq", topk=3, truncate=cut,
                                    max_obs_length=5) is None
  kept = teacher.teacher_trajectory(world, q, retriever, mode="sq", topk=3, truncate=cut,
                                    max_obs_length=10_000)
  assert kept == teacher.teacher_trajectory(world, q, retriever, mode="sq", topk=3)

  class Wrong(Retriever):
    def retrieve(self, queries, topk):
      return [[Document("x", "Nobody", "nothing")] for _ in queries]

  assert teacher.teacher_trajectory(world, q, Wrong(), mode="mq", topk=3) is None


def test_cut_subsamples():
  segs = [Segment("p1", "policy"), Segment("i1", "information"), Segment("p2", "policy"),
          Segment("i2", "information"), Segment("p3", "policy")]
  cuts = teacher.cut_subsamples(segs)
  assert cuts == [([], segs[0]), (segs[:2], segs[2]), (segs[:4], segs[4])]
  assert teacher.cut_subsamples([]) == []


def test_direct_answer():
  segs = teacher.direct_answer("Paris")
  assert segs == [Segment("<think> I know this </think><answer> Paris </answer>", "policy")]
  assert teacher.cut_subsamples(segs) == [([], segs[0])]


def test_copy_drills(world):
  drills = teacher.copy_drills(world, 50, seed=3)
  assert drills == teacher.copy_drills(world, 50, seed=3)
  assert len(drills) == 50
  words = {w for first, second in world.name_pools.values() for w in (*first, *second)}
  for user, segments in drills:
    assert user.startswith("Repeat: ")
    listed = user[len("Repeat: "):]
    assert [s.text for s in segments] == [f"<answer> {listed} </answer>"]
    assert segments[0].role == "policy"
    items = listed.split(", ")
    assert 2 <= len(items) <= 8
    for item in items:
      assert (item.isdigit() and int(item) in sw.FACT_NUMBERS) or set(item.split(" ")) <= words, item
  with pytest.raises(ValueError, match="name pools"):
    teacher.copy_drills(sw.World(0, (), (), ()), 1, seed=0)
