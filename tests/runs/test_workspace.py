"""The Workspace's RL data: the run's train split, or a fresh draw with its own retriever."""

import jax
import pytest
from ml_collections import ConfigDict

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.data import synthetic_world, teacher
from rag_r1_jax.runs.workspace import Workspace


def _workspace(tmp_path, world_draw: int, count: int = 1) -> Workspace:
  config = rag_r1.get_config("smoke")
  config.retrieval.backend = "bm25"  # no encoder needed to test which documents are indexed
  config.rl.world_draw = world_draw
  config.rl.world_draw_count = count
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return Workspace(config, mesh, str(tmp_path))


def test_rl_uses_the_train_split_by_default(tmp_path):
  ws = _workspace(tmp_path, 0)
  assert ws.rl_world_at(0) is None and ws.rl_draw_count == 1
  assert ws.rl_rows() == ws.train_rows()
  assert ws.rl_retriever_at(0) is ws.retriever


@pytest.mark.parametrize("draw", [2, 5])
def test_rl_on_a_fresh_draw_searches_that_draw(tmp_path, draw):
  ws = _workspace(tmp_path, draw)
  rows = ws.rl_rows()
  assert rows and all(r["id"].startswith(f"draw{draw}-") for r in rows)
  assert {r["id"] for r in rows}.isdisjoint(r["id"] for r in ws.train_rows())
  by_title = {p.title: p for p in ws.rl_world_at(0).passages}
  for entity in [e for e in ws.rl_world_at(0).entities if e.split == "train"][:10]:
    [[doc]] = ws.rl_retriever_at(0).retrieve([entity.name], 1)
    assert doc.title == entity.name and doc.text == by_title[entity.name].text
  # The world's distractors are indexed too; its test entities are not.
  split = {e.name: e.split for e in ws.world.entities}
  distractor = next(p for p in ws.world.passages if split.get(p.title) == "distractor")
  [[doc]] = ws.rl_retriever_at(0).retrieve([distractor.title], 1)
  assert doc.title == distractor.title
  test_names = {n for n, s in split.items() if s == "test"}
  assert not test_names & set(by_title)


def test_rl_cycles_through_draws_each_with_its_own_retriever(tmp_path):
  ws = _workspace(tmp_path, 4, count=3)
  assert ws.rl_draw_count == 3
  seen = set()
  for i in range(3):
    rows = ws.rl_rows(i)
    assert all(r["id"].startswith(f"draw{4 + i}-") for r in rows)
    world = ws.rl_world_at(i)
    people = [e for e in world.entities if isinstance(e, synthetic_world.Person)]
    # Each draw's retriever returns that draw's facts (a name may recur across draws with
    # other facts, so retrieving from another draw's index would read the wrong passage).
    by_title = {p.title: p.text for p in world.passages}
    for entity in people[:5]:
      [[doc]] = ws.rl_retriever_at(i).retrieve([entity.name], 1)
      assert doc.text == by_title[entity.name]
    assert ws.rl_retriever_at(i) is ws.rl_retriever_at(i)  # built once
    seen.add(id(ws.rl_retriever_at(i)))
  assert len(seen) == 3


def _sft_examples_before_and_after(tmp_path, world_draws: int, field: str, value: int):
  """SFT examples of a smoke workspace without copy drills, then with `sft.<field> = value`."""
  from rag_r1_jax.runs import sft_stage
  ws = _workspace(tmp_path, 0)
  ws.config.sft.copy_drills = 0
  ws.config.sft.world_draws, ws.config.sft.number_draws = world_draws, 0
  base = sft_stage.build_examples(ws)
  ws.config.sft[field] = value
  return ws, base, sft_stage.build_examples(ws)


def test_sft_number_draws_add_only_number_questions_of_later_draws(tmp_path):
  ws, base, more = _sft_examples_before_and_after(tmp_path, 1, "number_draws", 2)
  assert [e.tokens.tolist() for e in more[:len(base)]] == [e.tokens.tolist() for e in base]
  prompts = [ws.tokenizer.decode(e.tokens[e.loss_mask == 0]) for e in more[len(base):]]
  # Draws 2 and 3 (after the full draws 0 and 1), their number questions only, in order (the
  # teacher solves every question of this small world: its retriever is exact on a draw).
  expected = [q.question for draw in (2, 3)
              for q in synthetic_world.train_draw(ws.world, draw).split_questions("train")
              if q.reads_numbers()]
  assert len(prompts) == len(expected) and {"single", "comparison", "fanout"} == {
      q.kind for q in synthetic_world.train_draw(ws.world, 2).questions if q.reads_numbers()}
  assert all(question in prompt for question, prompt in zip(expected, prompts))


def test_sft_decision_drills_train_only_the_answer(tmp_path):
  ws, base, more = _sft_examples_before_and_after(tmp_path, 0, "decision_drills", 5)
  assert len(more) == len(base) + 5
  drills = teacher.decision_drills(ws.world, 5, ws.config.seed)
  for example, (user, (thought, answer)) in zip(more[len(base):], drills):
    context = ws.tokenizer.decode(example.tokens[example.loss_mask == 0])
    trained = ws.tokenizer.decode(example.tokens[example.loss_mask == 1])
    assert user in context and thought.text in context  # the question and the given thought
    assert trained.strip().startswith(answer.text)  # the answer (then the end-of-turn token)


def test_load_exported_policy_reads_back_a_stage_export(tmp_path):
  import numpy as np
  from rag_r1_jax.runs.workspace import load_exported_policy
  ws = _workspace(tmp_path, 0)
  with pytest.raises(FileNotFoundError, match="did the sft stage finish"):
    load_exported_policy(str(tmp_path), "sft")
  model = ws.initial_model()
  ws.export_stage_model("sft", model)
  tokenizer, loaded, model_dir = load_exported_policy(str(tmp_path), "sft")
  assert model_dir == ws.stage_model_dir("sft")
  assert tokenizer.get_vocab() == ws.tokenizer.get_vocab()
  np.testing.assert_array_equal(np.asarray(loaded.embed[...]), np.asarray(model.embed[...]))


def test_a_cut_short_world_tokenizer_is_rebuilt(tmp_path):
  import os
  vocab = _workspace(tmp_path, 0).tokenizer.get_vocab()
  path = tmp_path / "tokenizer" / "tokenizer.json"
  path.write_bytes(path.read_bytes()[:1000])  # a save that was interrupted
  assert _workspace(tmp_path, 0).tokenizer.get_vocab() == vocab
  assert sorted(os.listdir(tmp_path)) == ["tokenizer"]  # no .partial or .old left behind
