"""Tests for the synthetic world: determinism, splits, gold answers and plans, retrievability."""

import json

import pytest

from rag_r1_jax.tasks.synthetic_world import world as sw
from rag_r1_jax.retrieval.base import ExactRetriever, parse_contents


@pytest.fixture(scope="module")
def world() -> sw.World:
  return sw.make_world(0, 240)


def test_deterministic_from_seed():
  a, b, c = sw.make_world(5, 80), sw.make_world(5, 80), sw.make_world(6, 80)
  assert a.passages == b.passages and a.questions == b.questions and a.entities == b.entities
  assert a.passages != c.passages


def test_sizes(world):
  sizes = world.sizes()
  print("\nworld(seed=0, 240) sizes:", sizes)
  assert sizes["passages"] == 240 + 120
  assert (sizes["train_cities"], sizes["train_companies"], sizes["train_people"]) == (18, 36, 126)
  assert (sizes["test_cities"], sizes["test_companies"], sizes["test_people"]) == (6, 12, 42)
  assert sizes["train_single"] == 4 * 126 + 2 * 36 and sizes["test_single"] == 4 * 42 + 2 * 12
  for split, people in (("train", 126), ("test", 42)):
    assert sizes[f"{split}_bridge"] >= 2 * people
    assert sizes[f"{split}_comparison"] >= 2 * people and sizes[f"{split}_fanout"] >= 2 * people
  assert len({q.id for q in world.questions}) == len(world.questions)
  assert len({q.question for q in world.questions}) == len(world.questions)


def test_passage_text_exact():
  p = sw.Person("Ada Vel", "train", 1931, "Kisis Bay", 172, "Mamu Labs")
  c = sw.Company("Mamu Labs", "train", 1960, "Ada Vel", "Kisis Bay")
  assert sw.passage_text(p) == (
      "Ada Vel: born 1931 in Kisis Bay, height 172 cm, works for Mamu Labs.")
  assert sw.passage_text(c) == "Mamu Labs: a company founded 1960 by Ada Vel, based in Kisis Bay."
  assert sw.passage_text(sw.City("Kisis Bay", "test", 41)) == (
      "Kisis Bay: a city of 41 thousand people.")


def test_splits_are_disjoint_and_test_words_seen_in_train(world):
  split_of = {e.name: e.split for e in world.entities}
  for q in world.questions:
    for round_ in q.plan:
      for lookup in round_:
        assert split_of[lookup.entity] == q.split, (q, lookup)
    for answer in q.golden_answers:
      assert split_of.get(answer, q.split) == q.split
  train_words = {w for e in world.entities if e.split == "train" for w in e.name.split(" ")}
  for e in world.entities:
    if e.split == "test":
      assert set(e.name.split(" ")) <= train_words, e.name
  assert len({e.name for e in world.entities}) == len(world.entities)
  assert len({d.title for d in world.passages}) == len(world.passages)


def test_gold_answers_and_plans(world):
  for q in world.questions:
    flat = [lk for r in q.plan for lk in r]
    shape = tuple(len(r) for r in q.plan)
    if q.kind == "single":
      assert shape == (1,) and world.value(flat[0]) == q.golden_answers[0]
    elif q.kind == "bridge":
      assert shape == (1, 1)
      assert world.value(flat[0]) == flat[1].entity  # hop 2 searches hop 1's answer
      assert world.value(flat[1]) == q.golden_answers[0]
    else:
      assert shape == ((2,) if q.kind == "comparison" else (3,))
      key = flat[0].attribute
      values = [getattr(world.entity(lk.entity), key) for lk in flat]
      assert len(set(values)) == len(values)
      best = (min if key == "birth_year" else max)(zip(values, flat))[1].entity
      assert q.golden_answers == (best,)
    assert q.rounds("mq") == tuple(tuple(lk.entity for lk in r) for r in q.plan)
    assert q.rounds("sq") == tuple((lk.entity,) for lk in flat)


def test_question_examples(world):
  q = world.split_questions("test", ["bridge"])[0]
  person = world.entity(q.plan[0][0].entity)
  company = world.entity(person.employer)
  assert q.question == f"In which city is the company that {person.name} works for headquartered?"
  assert q.golden_answers == (company.headquarters,)
  assert q.rounds("mq") == ((person.name,), (company.name,)) == q.rounds("sq")
  fan = world.split_questions("train", ["fanout"])[0]
  assert len(fan.rounds("mq")) == 1 and len(fan.rounds("mq")[0]) == 3
  assert [len(r) for r in fan.rounds("sq")] == [1, 1, 1]
  tall = [q for q in world.questions if q.question.startswith("How tall is")][0]
  assert tall.golden_answers[0].endswith(" cm")
  assert tall.golden_answers[1] == tall.golden_answers[0][:-3]


def test_exact_retriever_finds_gold_passages(world):
  retriever = ExactRetriever(world.passages)
  lookups = [lk for q in world.questions for r in q.plan for lk in r]
  results = retriever.retrieve([lk.entity for lk in lookups], topk=3)
  top1 = sum(res[0].title == lk.entity for lk, res in zip(lookups, results)) / len(lookups)
  top3 = sum(any(d.title == lk.entity for d in res)
             for lk, res in zip(lookups, results)) / len(lookups)
  print(f"\nExactRetriever on {len(lookups)} gold queries: top-1 {top1:.4f}, top-3 {top3:.4f}")
  assert top3 == 1.0 and top1 >= 0.99


def test_distractors_share_words_and_are_never_asked(world):
  asked = {lk.entity for q in world.questions for r in q.plan for lk in r}
  distractors = [e for e in world.entities if e.split == "distractor"]
  assert distractors and not asked & {e.name for e in distractors}
  main_words = {w for e in world.entities if e.split != "distractor" for w in e.name.split(" ")}
  shared = sum(bool(set(e.name.split(" ")) & main_words) for e in distractors)
  assert shared == len(distractors)


def test_exports(world, tmp_path):
  rows = sw.corpus_rows(world)
  assert len(rows) == len(world.passages)
  assert parse_contents(rows[0]["contents"]) == (world.passages[0].title, world.passages[0].text)
  path = sw.write_corpus_jsonl(world, str(tmp_path / "corpus" / "world.jsonl"))
  with open(path, encoding="utf-8") as f:
    assert [json.loads(line) for line in f] == rows
  path = sw.write_questions_jsonl(world, "test", str(tmp_path / "test.jsonl"))
  with open(path, encoding="utf-8") as f:
    loaded = [json.loads(line) for line in f]
  expected = world.split_questions("test")
  assert len(loaded) == len(expected)
  assert loaded[0] == {"id": expected[0].id, "question": expected[0].question,
                       "golden_answers": list(expected[0].golden_answers)}


def test_too_small_world_is_rejected():
  with pytest.raises(ValueError, match="world.entities"):
    sw.make_world(0, 20)
  assert sw.make_world(0, 40).sizes()["test_fanout"] > 0


def test_train_draws_are_fresh_train_splits_from_the_same_word_pools(world):
  assert sw.train_draw(world, 0) is world
  a, b = sw.train_draw(world, 1), sw.train_draw(world, 2)
  again = sw.train_draw(sw.make_world(0, 240), 1)
  assert a.questions == again.questions and a.passages == again.passages  # deterministic
  assert a.questions != b.questions
  held_out = {e.name for e in world.entities if e.split != "train"}
  pool_words = {w for first, second in world.name_pools.values() for w in (*first, *second)}
  sizes = a.sizes()
  assert (sizes["train_cities"], sizes["train_companies"], sizes["train_people"]) == (18, 36, 126)
  assert not any(k.startswith("test") for k in sizes)
  for e in a.entities:
    assert e.split == "train" and e.name not in held_out, e.name
    assert set(e.name.split(" ")) <= pool_words, e.name
  # Facts are redrawn: the same name rarely keeps the same facts across draws.
  base = {e.name: e for e in world.entities}
  shared = [e for e in a.entities if e.name in base]
  assert sum(e == base[e.name] for e in shared) <= len(shared) // 10
  # Every question is answerable from the draw's own passages.
  retriever = ExactRetriever(a.passages)
  for q in a.questions[:200]:
    for round_ in q.plan:
      for lookup in round_:
        assert retriever.retrieve([lookup.entity], 1)[0][0].title == lookup.entity
  assert len({q.id for q in a.questions} | {q.id for q in world.questions}) == (
      len(a.questions) + len(world.questions))


def test_number_questions_are_the_ones_answered_from_numbers(world):
  numeric = [q for q in world.questions if q.reads_numbers()]
  assert {q.kind for q in numeric} == {"single", "comparison", "fanout"}
  assert all(q.reads_numbers() for q in world.questions if q.kind in ("comparison", "fanout"))
  singles = [q.question for q in numeric if q.kind == "single"]
  assert singles and all(s.startswith(("In which year was", "How tall is")) for s in singles)
  # A bridge reads a name first ("In which year was the founder of C born?").
  assert not any(q.reads_numbers() for q in world.questions if q.kind == "bridge")
