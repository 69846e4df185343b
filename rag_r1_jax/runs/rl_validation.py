"""Validation during RL (Search-R1's test_freq): a held-out slice answered greedily.

Every `rl.eval_every` steps the policy answers the first `rl.eval_questions` questions of each
evaluation dataset (the test questions, never trained on) with the rollout engine, greedily,
searching the run's own retriever; the metrics join that step's row under `val/`. Greedy
decoding from a fixed seed draws nothing from training's random streams, so the trained
parameters are the same with validation on or off.
"""

import time
from typing import Sequence

import numpy as np

from rag_r1_jax.data import sources
from rag_r1_jax.eval import answer_metrics, harness
from rag_r1_jax.rollout.engine import RolloutEngine

PREFIX = "val/"


def validation_questions(ws, engine: RolloutEngine, count: int) -> list[harness.EvalQuestion]:
  """The first `count` questions (0: all) of each of the run's evaluation datasets.

  Raises before training if there are none or one cannot fit the engine's sampler.
  """
  questions = harness.build_questions(ws.eval_datasets(), ws.tokenizer, ws.prompt_variant,
                                      max_questions=count)
  if not questions:
    raise ValueError("config.rl.eval_every > 0 but the evaluation datasets have no questions "
                     "(config.data.eval_datasets)")
  harness.check_prompt_lengths(engine, questions)
  return questions


def validation_metrics(records: Sequence[dict]) -> dict[str, float]:
  """'val/em', 'val/answer_rate', 'val/searches_per_question' over the records (harness
  layout); with two or more datasets also 'val/em/<dataset>' and
  'val/searches_per_question/<dataset>'."""
  em = [answer_metrics.exact_match(r["answer"], r["golden_answers"]) for r in records]
  searches = [r["turns"] for r in records]
  by_source = sources.per_source_means([r["dataset"] for r in records], em=em,
                                       searches_per_question=searches)
  means = {"em": float(np.mean(em)),
           "answer_rate": float(np.mean([r["answer"] is not None for r in records])),
           "searches_per_question": float(np.mean(searches))}
  return {PREFIX + k: v for k, v in (means | by_source).items()}


def run_validation(engine: RolloutEngine, questions: Sequence[harness.EvalQuestion], *,
                   batch_size: int, seed: int) -> dict[str, float]:
  """Rolls out every question once, greedily, with the engine's current policy and retriever;
  returns validation_metrics plus 'val/seconds'."""
  start = time.perf_counter()
  records = harness.rollout_records(engine, questions, batch_size=batch_size,
                                    sampling=harness.GREEDY, seed=seed, progress=False,
                                    warmup=False)
  return validation_metrics(records) | {PREFIX + "seconds": time.perf_counter() - start}
