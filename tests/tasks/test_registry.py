"""The task registry: a new data source is one module plus one registry line (a tiny task runs
the whole pipeline), and no synthetic-world name leaks out of its package."""

import ast
import json
import os
import re

import jax
import pytest

from configs import rag_r1
from rag_r1_jax import config_validation, pipeline, sharding, tasks
from rag_r1_jax.tasks import base
from tests.char_tokenizer import char_tokenizer

PACKAGE = os.path.dirname(os.path.abspath(tasks.__file__)).rsplit(os.sep, 1)[0]
WORLD_PACKAGE = os.path.join(PACKAGE, "tasks", "synthetic_world")
WORLD_NAMES = re.compile(r"world|draw|drill|teacher", re.IGNORECASE)


def _names_and_strings(tree: ast.AST):
  """(line, text) of every identifier and every string literal that is not a docstring."""
  docstrings = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        docstrings.add(id(body[0].value))
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      yield node.lineno, node.id
    elif isinstance(node, ast.Attribute):
      yield node.lineno, node.attr
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      yield node.lineno, node.name
    elif isinstance(node, ast.arg):
      yield node.lineno, node.arg
    elif isinstance(node, ast.alias):
      yield node.lineno, node.name
      if node.asname:
        yield node.lineno, node.asname
    elif isinstance(node, ast.keyword) and node.arg:
      yield node.value.lineno, node.arg
    elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings):
      yield node.lineno, node.value


def test_no_synthetic_world_name_outside_its_package():
  registered = {"synthetic_world", tasks.TASKS["synthetic_world"]}  # the registry's own line
  found = []
  for folder, _, files in os.walk(PACKAGE):
    if folder.startswith(WORLD_PACKAGE):
      continue
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      found += [f"{os.path.relpath(path, PACKAGE)}:{line}: {text!r}"
                for line, text in _names_and_strings(tree)
                if WORLD_NAMES.search(text) and text not in registered]
  assert not found, "synthetic-world names outside tasks/synthetic_world:\n" + "\n".join(found)


def test_the_scan_sees_names_strings_and_skips_docstrings():
  tree = ast.parse('"""a world docstring"""\nimport x.teacher as t\n'
                   'def f(draws):\n  """the draw."""\n  return cfg.world_seed, "drill", g(world=1)\n')
  hits = [text for _, text in _names_and_strings(tree) if WORLD_NAMES.search(text)]
  assert sorted(hits) == ["draws", "drill", "world", "world_seed", "x.teacher"]


# ---- a tiny task, added as a user would: one module, one registry line -------------------------

QUESTIONS = [("Who painted the Blue Door?", "Anna Berg"), ("Where is Port Lane?", "Vester"),
             ("Which river runs by Holm?", "Skaal"), ("Who built the Old Mill?", "Per Lund")]


class TinyTask(base.Task):
  """Four questions over four in-memory passages; evaluated on the same four."""

  def train_rows(self):
    return [{"id": f"t{i}", "question": q, "golden_answers": [a]}
            for i, (q, a) in enumerate(QUESTIONS)]

  def eval_datasets(self):
    return {"tiny": self.train_rows()}

  def documents(self):
    from rag_r1_jax.retrieval.base import Document
    return [Document(id=str(i), title=a, text=f"{q} {a}.") for i, (q, a) in enumerate(QUESTIONS)]

  def build_tokenizer(self, out_dir):  # config.tokenizer.kind='task'
    char_tokenizer().save_pretrained(out_dir)


TASK = TinyTask  # what the registry imports from a task's module


def test_a_new_task_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "tiny", __name__)  # the one registry line
  config = rag_r1.get_config("smoke")
  config.data.source = "tiny"
  config.world = tasks.task_class("synthetic_world").defaults()
  config.retrieval.backend = "bm25"
  config.rollout.max_total_length = 1024  # a character per token
  config.stages = "rl,eval"
  config.rl.steps = 1
  config.rl.oversample = 1.0
  config.rl.kl_coef = 0.0
  config.eval.max_questions = 0
  config_validation.validate(config)  # 'tiny' is a valid data.source once registered
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  pipeline.run(config, mesh, str(tmp_path))
  with open(tmp_path / "metrics" / "rl.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1]
  with open(tmp_path / "eval" / "rl" / "trajectories.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert sorted(r["question"] for r in rows) == sorted(q for q, _ in QUESTIONS)
  assert {r["dataset"] for r in rows} == {"tiny"}


def test_an_unregistered_source_is_refused_with_the_valid_ones():
  config = rag_r1.get_config("smoke")
  config.data.source = "tiny"
  with pytest.raises(ValueError, match=r"config.data.source='tiny'; valid: \['synthetic_world'"):
    tasks.get(config)
  with pytest.raises(config_validation.ConfigError, match="config.data.source='tiny': must be "
                                                          "one of synthetic_world"):
    config_validation.validate(config)
