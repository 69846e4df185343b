"""The synthetic-world task: eval datasets by kind, RL on fresh draws (each searched over its
own passages), stage 1's number draws and decision drills, its config section."""

import pytest

from configs import rag_r1
from configs.common import base_config
from rag_r1_jax import config_validation, tasks
from rag_r1_jax.tasks.synthetic_world import draw_of, teacher
from rag_r1_jax.tasks.synthetic_world import world as sw
from tests.runs.test_workspace import workspace
from tests.test_config_and_main import _validates_or_names


def test_eval_datasets_split_test_questions_by_kind():
  config = base_config()
  config.data.source = "synthetic_world"
  config.world.entities = 60
  datasets = tasks.get(config).eval_datasets()
  assert list(datasets) == ["single", "bridge", "comparison", "fanout"]
  world = sw.make_world(config.world.seed, config.world.entities)
  by_id = {q.id: q for q in world.questions}
  test_entities, train_entities = set(), set()
  for q in world.questions:
    names = {lk.entity for r in q.plan for lk in r}
    (test_entities if q.split == "test" else train_entities).update(names)
  for kind, rows in datasets.items():
    assert rows, kind
    assert rows == [q.row() for q in world.split_questions("test", kinds=(kind,))]
    for row in rows:
      q = by_id[row["id"]]
      assert q.kind == kind and q.split == "test"
      assert all(world.entity(lk.entity).split == "test" for r in q.plan for lk in r)
  assert test_entities and not test_entities & train_entities
  assert sum(map(len, datasets.values())) == len(world.split_questions("test"))


def test_rl_uses_the_train_split_by_default(tmp_path):
  ws = workspace(tmp_path, 0)
  assert ws.task.rl_row_sets() == 1
  assert ws.task.rl_rows(0) == ws.train_rows()
  assert ws.task.rl_documents(0) is None


@pytest.mark.parametrize("draw", [2, 5])
def test_rl_on_a_fresh_draw_searches_that_draw(tmp_path, draw):
  ws = workspace(tmp_path, draw)
  rows = ws.task.rl_rows(0)
  assert rows and all(r["id"].startswith(f"draw{draw}-") for r in rows)
  assert {r["id"] for r in rows}.isdisjoint(r["id"] for r in ws.train_rows())
  by_title = {p.title: p for p in draw_of(ws.config, draw).passages}
  for entity in [e for e in draw_of(ws.config, draw).entities if e.split == "train"][:10]:
    [[doc]] = ws.rl_retriever(0).retrieve([entity.name], 1)
    assert doc.title == entity.name and doc.text == by_title[entity.name].text
  # The world's distractors are indexed too; its test entities are not.
  split = {e.name: e.split for e in ws.task.world.entities}
  distractor = next(p for p in ws.task.world.passages if split.get(p.title) == "distractor")
  [[doc]] = ws.rl_retriever(0).retrieve([distractor.title], 1)
  assert doc.title == distractor.title
  test_names = {n for n, s in split.items() if s == "test"}
  assert not test_names & set(by_title)


def test_rl_cycles_through_draws_each_with_its_own_retriever(tmp_path):
  ws = workspace(tmp_path, 4, count=3)
  assert ws.task.rl_row_sets() == 3
  seen = set()
  for i in range(3):
    rows = ws.task.rl_rows(i)
    assert all(r["id"].startswith(f"draw{4 + i}-") for r in rows)
    world = draw_of(ws.config, 4 + i)
    people = [e for e in world.entities if isinstance(e, sw.Person)]
    # Each draw's retriever returns that draw's facts (a name may recur across draws with
    # other facts, so retrieving from another draw's index would read the wrong passage).
    by_title = {p.title: p.text for p in world.passages}
    for entity in people[:5]:
      [[doc]] = ws.rl_retriever(i).retrieve([entity.name], 1)
      assert doc.text == by_title[entity.name]
    assert ws.rl_retriever(i) is ws.rl_retriever(i)  # built once
    seen.add(id(ws.rl_retriever(i)))
  assert len(seen) == 3


def _sft_examples_before_and_after(tmp_path, sft_draws: int, field: str, value: int):
  """SFT examples of a smoke workspace without copy drills, then with `world.<field> = value`."""
  from rag_r1_jax.runs import sft_stage
  ws = workspace(tmp_path, 0)
  ws.config.world.copy_drills = 0
  ws.config.world.sft_draws, ws.config.world.number_draws = sft_draws, 0
  base = sft_stage.build_examples(ws)
  ws.config.world[field] = value
  return ws, base, sft_stage.build_examples(ws)


def test_number_draws_add_only_number_questions_of_later_draws(tmp_path):
  ws, base, more = _sft_examples_before_and_after(tmp_path, 1, "number_draws", 2)
  assert [e.tokens.tolist() for e in more[:len(base)]] == [e.tokens.tolist() for e in base]
  prompts = [ws.tokenizer.decode(e.tokens[e.loss_mask == 0]) for e in more[len(base):]]
  # Draws 2 and 3 (after the full draws 0 and 1), their number questions only, in order (the
  # teacher solves every question of this small world: its retriever is exact on a draw).
  expected = [q.question for draw in (2, 3)
              for q in sw.train_draw(ws.task.world, draw).split_questions("train")
              if q.reads_numbers()]
  assert len(prompts) == len(expected) and {"single", "comparison", "fanout"} == {
      q.kind for q in sw.train_draw(ws.task.world, 2).questions if q.reads_numbers()}
  assert all(question in prompt for question, prompt in zip(expected, prompts))


def test_decision_drills_train_only_the_answer(tmp_path):
  ws, base, more = _sft_examples_before_and_after(tmp_path, 0, "decision_drills", 5)
  assert len(more) == len(base) + 5
  drills = teacher.decision_drills(ws.task.world, 5, ws.config.seed)
  for example, (user, (thought, answer)) in zip(more[len(base):], drills):
    context = ws.tokenizer.decode(example.tokens[example.loss_mask == 0])
    trained = ws.tokenizer.decode(example.tokens[example.loss_mask == 1])
    assert user in context and thought.text in context  # the question and the given thought
    assert trained.strip().startswith(answer.text)  # the answer (then the end-of-turn token)


@pytest.mark.parametrize("rl_draw, count, problem", [
    (0, 2, "config.world.rl_draw_count=2: cycles through fresh draws"),
    (19, 0, "config.world.rl_draw_count=0: must be positive"),
    (19, 8, None), (0, 1, None)])
def test_rl_draw_count_needs_a_draw(rl_draw, count, problem):
  config = rag_r1.get_config("mq")
  config.world.rl_draw, config.world.rl_draw_count = rl_draw, count
  _validates_or_names(config, problem)


@pytest.mark.parametrize("sft_draws, number_draws, rl_draw, problem", [
    (8, 6, 15, None), (8, 6, 0, None),
    (8, 6, 14, "config.world.rl_draw=14: must be 0"),
    (12, 6, 15, "config.world.rl_draw=15: must be 0")])
def test_rl_draws_are_ones_sft_never_trained_on(sft_draws, number_draws, rl_draw, problem):
  config = rag_r1.get_config("mq")
  config.world.sft_draws, config.world.number_draws = sft_draws, number_draws
  config.world.rl_draw = rl_draw
  config.world.rl_draw_count = 32 if rl_draw else 1
  _validates_or_names(config, problem)
  if problem:  # the message names the last draw SFT trained on
    with pytest.raises(config_validation.ConfigError,
                       match=f"number_draws = {sft_draws + number_draws}$"):
      config_validation.validate(config)


def test_the_world_section_is_refused_when_another_task_runs():
  config = rag_r1.get_config("mq")
  config.data.source = "wiki_extracts"
  _validates_or_names(config, "config.world.{copy_drills, number_draws, rl_draw, "
                      "rl_draw_count, sft_draws} set, but only data.source='synthetic_world' "
                      "reads config.world")
  config.world = tasks.task_class("synthetic_world").defaults()
  config_validation.validate(config)  # left at its defaults: nothing to refuse
