"""The Workspace: a task's RL retrievers, a cut-short task tokenizer rebuilt."""

import jax
from ml_collections import ConfigDict

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.runs.workspace import Workspace


def workspace(tmp_path, rl_draw: int = 0, count: int = 1) -> Workspace:
  """The smoke config's workspace over BM25 (no encoder to load), RL on draws rl_draw.."""
  config = rag_r1.get_config("smoke")
  config.retrieval.backend = "bm25"
  config.world.rl_draw = rl_draw
  config.world.rl_draw_count = count
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return Workspace(config, mesh, str(tmp_path))


def test_rl_retrievers_search_the_documents_the_task_gives_each_set(tmp_path):
  ws = workspace(tmp_path)
  assert ws.rl_retriever(0) is ws.retriever  # no documents of its own: the run's retriever
  ws = workspace(tmp_path, 4, count=2)
  assert ws.rl_retriever(0) is ws.rl_retriever(0) is not ws.retriever  # built once
  assert ws.rl_retriever(1) is not ws.rl_retriever(0)
  for i in range(2):
    doc = ws.task.rl_documents(i)[0]
    [[hit]] = ws.rl_retriever(i).retrieve([doc.title], 1)
    assert (hit.title, hit.text) == (doc.title, doc.text)


def test_a_cut_short_task_tokenizer_is_rebuilt(tmp_path):
  import os
  vocab = workspace(tmp_path).tokenizer.get_vocab()
  path = tmp_path / "tokenizer" / "tokenizer.json"
  path.write_bytes(path.read_bytes()[:1000])  # a save that was interrupted
  assert workspace(tmp_path).tokenizer.get_vocab() == vocab
  assert sorted(os.listdir(tmp_path)) == ["tokenizer"]  # no .partial or .old left behind
