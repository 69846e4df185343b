"""The synthetic knowledge world as a task: questions and passages generated from a seed
(world.py), a programmatic teacher and drills for stage 1 (teacher.py), a tokenizer trained
for it (tokenizer.py), and RL on fresh draws of its train split. Its settings are the
`config.world` section."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from ml_collections import config_dict

from rag_r1_jax.tasks.base import Task

if TYPE_CHECKING:
  from rag_r1_jax.retrieval.base import Document

# The world's question kinds, each evaluated as its own dataset.
KINDS = ("single", "bridge", "comparison", "fanout")


@functools.lru_cache(maxsize=4)
def _world(seed: int, entities: int):
  from rag_r1_jax.tasks.synthetic_world import world
  return world.make_world(seed, entities)


@functools.lru_cache(maxsize=64)
def _draw(seed: int, entities: int, draw: int):
  from rag_r1_jax.tasks.synthetic_world import world
  return world.train_draw(_world(seed, entities), draw)


def world_of(config):
  """The run's world (config.world.seed, config.world.entities), built once per process."""
  return _world(config.world.seed, config.world.entities)


def draw_of(config, draw: int):
  """The run's world with its train split redrawn (world.train_draw; draw 0 is the world)."""
  return _draw(config.world.seed, config.world.entities, draw)


class SyntheticWorld(Task):
  """Questions and passages of a generated world; see configs/rag_r1.py for the default run."""

  section = "world"
  has_demonstrations = True

  @classmethod
  def defaults(cls) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.seed = 0
    c.entities = 240
    # Stage 1: teacher trajectories also over this many fresh draws of the train split (new
    # names and facts from the same word pools; draw 0 is the run's own world) ...
    c.sft_draws = 0
    # ... and over this many more keeping only the questions answered by reading numbers
    # (years, heights, populations), drawn after those.
    c.number_draws = 0
    c.copy_drills = 0  # list-repeating drills mixed into stage 1
    c.decision_drills = 0  # "which is older" drills over given facts
    # RL: 0 rolls out the run's own train questions; N > 0 the questions of draw N + s mod
    # rl_draw_count at step s, searched over that draw's passages plus the world's distractors.
    # With N above the draws stage 1 saw, reward comes from reading, not recalling.
    c.rl_draw = 0
    c.rl_draw_count = 1
    c.split_digits = False  # the world's tokenizer: one token per digit, not per number
    return c

  @classmethod
  def validate(cls, config, check) -> None:
    for field in ("seed", "sft_draws", "number_draws", "copy_drills", "decision_drills",
                  "rl_draw"):
      check(f"world.{field}", lambda v: v >= 0, "must be >= 0")
    for field in ("entities", "rl_draw_count"):
      check(f"world.{field}", lambda v: v > 0, "must be positive")
    w = config.world
    check("world.rl_draw_count", lambda v: v <= 1 or w.rl_draw > 0,
          "cycles through fresh draws, so it needs config.world.rl_draw > 0 (else keep 1)")
    seen = w.sft_draws + w.number_draws
    check("world.rl_draw", lambda v: v == 0 or v > seen,
          f"must be 0 (the run's own train split) or a draw SFT did not train on: above "
          f"config.world.sft_draws + config.world.number_draws = {seen}")

  @property
  def world(self):
    return world_of(self.config)

  def train_rows(self) -> list[dict]:
    return [q.row() for q in self.world.split_questions("train")]

  def eval_datasets(self) -> dict[str, list[dict]]:
    return {kind: [q.row() for q in self.world.split_questions("test", kinds=(kind,))]
            for kind in KINDS}

  def documents(self) -> Sequence[Document]:
    return list(self.world.passages)

  def demonstrations(self, retriever, truncate, prompt_variant):
    from rag_r1_jax.tasks.synthetic_world import teacher
    return teacher.sft_trajectories(self.config, retriever, truncate, prompt_variant)

  def rl_row_sets(self) -> int:
    return self.config.world.rl_draw_count if self.config.world.rl_draw else 1

  def rl_rows(self, index: int) -> list[dict]:
    if not self.config.world.rl_draw:
      return self.train_rows()
    drawn = draw_of(self.config, self.config.world.rl_draw + index)
    return [q.row() for q in drawn.split_questions("train")]

  def rl_documents(self, index: int) -> Sequence[Document] | None:
    if not self.config.world.rl_draw:
      return None
    drawn = draw_of(self.config, self.config.world.rl_draw + index)
    distractors = {e.name for e in self.world.entities if e.split == "distractor"}
    return list(drawn.passages) + [p for p in self.world.passages if p.title in distractors]

  def build_tokenizer(self, out_dir: str) -> None:
    from rag_r1_jax.data import prompts
    from rag_r1_jax.tasks.synthetic_world import tokenizer
    tokenizer.build_world_tokenizer(self.world, out_dir,
                                    extra_texts=list(prompts.TEMPLATES.values()),
                                    json_indent=self.config.rollout.mq_json_indent,
                                    split_digits=self.config.world.split_digits)


TASK = SyntheticWorld
