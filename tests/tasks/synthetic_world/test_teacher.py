"""The synthetic world's programmatic teacher: its trajectories and drills."""

import pytest

from rag_r1_jax.tasks.demonstrations import Segment, trajectory_text
from rag_r1_jax.tasks.synthetic_world import teacher
from rag_r1_jax.tasks.synthetic_world import world as sw
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
    assert answer_metrics.extract_last_answer(trajectory_text(segments)) == q.golden_answers[0]
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


def test_decision_drills(world):
  drills = teacher.decision_drills(world, 300, seed=5)
  assert drills == teacher.decision_drills(world, 300, seed=5)
  assert drills != teacher.decision_drills(world, 300, seed=6)
  assert len(drills) == 300
  not_train = {e.name for e in world.entities if e.split != "train"}
  seen = set()
  for user, (thought, answer) in drills:
    assert user.startswith("Decide: ")
    question = user[len("Decide: "):]
    assert (thought.role, answer.role) == ("information", "policy")  # only the answer trains
    facts = thought.text.removeprefix("<think> ").removesuffix(" </think>").split("; ")
    winner = answer.text.removeprefix("<answer> ").removesuffix(" </answer>")
    names = [f.split(" was ")[0].split(" has ")[0].split(" is ")[0] for f in facts]
    values = [int(next(w for w in f.split() if w.isdigit())) for f in facts]
    # Which attribute: the world's question wording for these names.
    keys = [k for k, (_, _, pair, fan) in sw.COMPARISONS.items()
            if question == (pair if len(names) == 2 else fan).format(*names)]
    assert len(keys) == 1, question
    key = keys[0]
    smallest = sw.COMPARISONS[key][1]
    assert facts == [sw.fact_text(key, n, sw.value_text(key, v)) for n, v in zip(names, values)]
    assert len(set(values)) == len(values) and set(values) <= set(sw.VALUE_GRIDS[key])
    assert winner == names[values.index(min(values) if smallest else max(values))]
    assert not set(names) & not_train
    seen.add((key, len(names)))
  assert seen == {(k, n) for k in sw.COMPARISONS for n in (2, 3)}
  # A drill's thought is the one a teacher trajectory ends with for the same names and values.
  for q in world.split_questions("train", ["comparison", "fanout"])[:20]:
    segments = teacher.teacher_trajectory(world, q, ExactRetriever(world.passages), mode="mq",
                                          topk=1)
    key = q.plan[0][0].attribute
    values = [getattr(world.entity(lk.entity), key) for lk in q.plan[0]]
    facts = "; ".join(sw.fact_text(key, lk.entity, sw.value_text(key, v))
                      for lk, v in zip(q.plan[0], values))
    answer = q.golden_answers[0]
    assert segments[-1].text == f"<think> {facts} </think><answer> {answer} </answer>"
  with pytest.raises(ValueError, match="name pools"):
    teacher.decision_drills(sw.World(0, (), (), ()), 1, seed=0)
