"""The Task protocol: what a data source gives a run.

A task is built from the run's config (`config.data.source` names it in tasks/__init__.py's
registry). Rows are dicts with id, question, golden_answers; rows read from files also carry
data_source and extra_info. Everything except train_rows and eval_datasets has a default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ml_collections import config_dict

if TYPE_CHECKING:  # configs import the registry; only annotations need these (and JAX)
  from rag_r1_jax.retrieval.base import Document, Retriever
  from rag_r1_jax.rollout import observation
  from rag_r1_jax.tasks.demonstrations import Segment

  Demonstrations = list[tuple[str, list[Segment]]]  # (user prompt text, response segments)


class Task:
  """A data source's readers over the run's config. Subclasses override what they have."""

  # The task's own config section (`config.<section>`), or None. Its defaults come from
  # `defaults()` and are added to every config (configs/common.py), so overrides parse.
  section: str | None = None
  # Whether `demonstrations` writes stage 1's examples (else stage 1 reads sft.data_path),
  # searching the run's retriever while it does.
  has_demonstrations: bool = False
  # Whether `documents()` gives the documents to index; False: config.retrieval's corpus,
  # index or server holds them (its paths are then required).
  own_documents: bool = True

  def __init__(self, config):
    self.config = config

  @classmethod
  def defaults(cls) -> config_dict.ConfigDict:
    """The fields of `config.<section>` with their default values."""
    return config_dict.ConfigDict()

  @classmethod
  def validate(cls, config, check) -> None:
    """Checks the task's own fields: check(field, ok(value) -> bool, message)."""

  def train_rows(self) -> list[dict]:
    """RL training questions."""
    raise NotImplementedError

  def eval_datasets(self) -> dict[str, list[dict]]:
    """Evaluation questions: dataset (or data_source) -> rows."""
    raise NotImplementedError

  def documents(self) -> Sequence[Document] | None:
    """In-memory documents to index, or None (the corpus files of config.retrieval)."""
    return None

  def demonstrations(self, retriever: Retriever, truncate: observation.Truncate,
                     prompt_variant: str) -> Demonstrations:
    """Stage 1's examples, written by the task searching `retriever` (has_demonstrations)."""
    raise NotImplementedError(f"{type(self).__name__} writes no demonstrations")

  # ---- RL: a task may give each step questions (and documents) of its own ------------------

  def rl_row_sets(self) -> int:
    """How many question sets RL cycles through, one per step (step s uses set s mod N)."""
    return 1

  def rl_rows(self, index: int) -> list[dict]:
    """The questions of RL's `index`-th set."""
    return self.train_rows()

  def rl_documents(self, index: int) -> Sequence[Document] | None:
    """The documents RL's `index`-th set searches, or None (the run's retriever)."""
    return None

  def build_tokenizer(self, out_dir: str) -> None:
    """Writes a tokenizer trained for the task to `out_dir` (config.tokenizer.kind='task')."""
    raise ValueError(f"config.tokenizer.kind='task', but data.source={self.config.data.source!r} "
                     "builds no tokenizer; use tokenizer.kind='hf'")
