"""The Workspace's RL data: the run's train split, or a fresh draw with its own retriever."""

import jax
import pytest
from ml_collections import ConfigDict

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.runs.workspace import Workspace


def _workspace(tmp_path, world_draw: int) -> Workspace:
  config = rag_r1.get_config("smoke")
  config.retrieval.backend = "bm25"  # no encoder needed to test which documents are indexed
  config.rl.world_draw = world_draw
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return Workspace(config, mesh, str(tmp_path))


def test_rl_uses_the_train_split_by_default(tmp_path):
  ws = _workspace(tmp_path, 0)
  assert ws.rl_world is None
  assert ws.rl_rows() == ws.train_rows()
  assert ws.rl_retriever is ws.retriever


@pytest.mark.parametrize("draw", [2, 5])
def test_rl_on_a_fresh_draw_searches_that_draw(tmp_path, draw):
  ws = _workspace(tmp_path, draw)
  rows = ws.rl_rows()
  assert rows and all(r["id"].startswith(f"draw{draw}-") for r in rows)
  assert {r["id"] for r in rows}.isdisjoint(r["id"] for r in ws.train_rows())
  by_title = {p.title: p for p in ws.rl_world.passages}
  for entity in [e for e in ws.rl_world.entities if e.split == "train"][:10]:
    [[doc]] = ws.rl_retriever.retrieve([entity.name], 1)
    assert doc.title == entity.name and doc.text == by_title[entity.name].text
  # The world's distractors are indexed too; its test entities are not.
  split = {e.name: e.split for e in ws.world.entities}
  distractor = next(p for p in ws.world.passages if split.get(p.title) == "distractor")
  [[doc]] = ws.rl_retriever.retrieve([distractor.title], 1)
  assert doc.title == distractor.title
  test_names = {n for n, s in split.items() if s == "test"}
  assert not test_names & set(by_title)
