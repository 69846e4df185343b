"""Long silent stretches say what they are doing: compile announcements around the jitted
steps (timing.compiling), preparation lines (timing.announce), the corpus encoding's size and
bar. (The RL stage's phase and per-step lines: tests/runs/test_rl_stage.py.)"""

import re

import faiss
import jax
import jax.numpy as jnp
import numpy as np

from rag_r1_jax import timing
from rag_r1_jax.retrieval import dense
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from tests.training import test_update_common as h


def _lines(capsys) -> list[str]:
  return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def _compiled_seconds(line: str) -> float:
  match = re.search(r"compiled in ([0-9.]+) s$", line)
  assert match, line
  return float(match.group(1))


def test_compiling_announces_each_new_shape_before_it_compiles(capsys):
  said_before_the_call = []

  @jax.jit
  def double(x):
    return x * 2

  def call(x):
    with timing.compiling("doubling", str(list(x.shape))):
      said_before_the_call.append(capsys.readouterr().out)
      double(x).block_until_ready()
    return _lines(capsys)

  before = timing.compile_seconds()
  first = call(jnp.ones((3,)))
  assert timing.compile_seconds() > before  # the first call did compile
  again, new_shape = call(jnp.ones((3,))), call(jnp.ones((5,)))
  assert said_before_the_call == ["compiling doubling for [3] ...\n", "",
                                  "compiling doubling for [5] ...\n"]
  assert len(first) == 1 and first[0].startswith("doubling for [3]: compiled in ")
  assert _compiled_seconds(first[0]) >= 0
  assert again == []  # the same shape again: cached, nothing said
  assert len(new_shape) == 1 and new_shape[0].startswith("doubling for [5]: compiled in ")


def test_announce_says_what_before_and_how_long_after(capsys):
  with timing.announce("retrieval: something slow"):
    jax.jit(lambda x: x + 1)(jnp.arange(4)).block_until_ready()
  lines = _lines(capsys)
  assert lines[0] == "retrieval: something slow ..."
  assert re.fullmatch(r"retrieval: something slow: done in [0-9.]+ s \(compile [0-9.]+ s\)",
                      lines[1]), lines[1]


def test_rl_update_announces_scoring_and_update_compiles_once(capsys):
  mesh = h.mesh()
  config = h.rl_config(kl_coef=0.01, batch_size=2, mini_batch_size=2, group_size=4,
                       microbatches=2)
  batch = h.trajectory_batch(8, 20, h.TINY.vocab_size, seed=5)
  state = train_state.create_rl_state(h.model(mesh, seed=1), config)
  capsys.readouterr()
  state, metrics = rl_trainer.rl_update(state, batch, config)
  lines = _lines(capsys)
  wanted = ["compiling rl scoring (reference forward) for [4, 20] ...",
            "compiling rl update for [8, 20] in 2 microbatch(es) ..."]
  for want in wanted:
    assert want in lines, (want, lines)
    after = lines[lines.index(want) + 1]
    assert after.startswith(want[len("compiling "):-len(" ...")] + ": compiled in "), after
  # Where the step's time went: scoring and update apart, compilation apart from both.
  assert metrics["scoring_compile_seconds"] > 0 and metrics["train_compile_seconds"] > 0
  assert metrics["scoring_seconds"] >= 0 and metrics["train_seconds"] >= 0
  state, metrics = rl_trainer.rl_update(state, batch, config)
  assert not [line for line in _lines(capsys) if "compil" in line]
  assert metrics["train_compile_seconds"] < 0.5


class _FakeEncoder:
  """Enough of a SentenceEncoder for DenseRetriever: reports two batches through `progress`."""
  name, batch_size, dim = "fake-encoder", 2, 4

  class spec:  # noqa: N801
    max_length = 32

  def encode_passages(self, texts, progress=None):
    report = progress or (lambda done, status: None)
    report(0, f"tokenising {len(texts)} texts")
    report(0, "compiling 2 x 16")
    for start in range(0, len(texts), self.batch_size):
      report(len(texts[start:start + self.batch_size]), "encoding")
    return np.eye(len(texts), self.dim, dtype=np.float32)


def test_in_memory_index_says_how_many_passages_it_encodes(capsys):
  docs = [Document(str(i), f"title {i}", f"passage {i}") for i in range(3)]
  retriever = dense.DenseRetriever.from_documents(_FakeEncoder(), docs, progress=True)
  assert isinstance(retriever.index, faiss.Index) and retriever.index.ntotal == 3
  captured = capsys.readouterr()
  assert ("retrieval: encoding 3 passages with fake-encoder (batches of 2, up to 32 tokens; "
          "one compilation per new batch shape)") in captured.out
  assert "encode fake-encoder: 100%" in captured.err and "3/3" in captured.err
  dense.DenseRetriever.from_documents(_FakeEncoder(), docs)  # progress off: silent
  assert capsys.readouterr().out == ""
