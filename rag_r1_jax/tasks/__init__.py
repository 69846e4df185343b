"""Data sources as tasks: `config.data.source` names one of TASKS.

Adding a source is one module defining a `Task` subclass named `TASK` (tasks/base.py) and one
line here.
"""

import importlib

from rag_r1_jax.tasks.base import Task

TASKS = {
    "synthetic_world": "rag_r1_jax.tasks.synthetic_world",
    "wiki_extracts": "rag_r1_jax.tasks.wiki",
    "flashrag": "rag_r1_jax.tasks.flashrag",
}


def task_class(name: str) -> type[Task]:
  """The Task class a source name registers."""
  if name not in TASKS:
    raise ValueError(f"config.data.source={name!r}; valid: {list(TASKS)}")
  return importlib.import_module(TASKS[name]).TASK


def get(config) -> Task:
  """The run's task (config.data.source), built from the config."""
  return task_class(config.data.source)(config)


def config_sections() -> dict:
  """{section: default ConfigDict} of every registered task that has its own section."""
  return {cls.section: cls.defaults() for cls in map(task_class, TASKS) if cls.section}
