"""The evaluation harness: benchmark questions -> rollouts -> scored records, tables and plots.

Every question of every dataset becomes a prompt (the configured variant, through the chat
template); each dataset's questions run through the rollout engine in fixed-size batches that
never mix datasets (a batch's seconds are shared by its rows, so a mixed batch would charge one
kind for another; a dataset's last batch is padded by the engine, so compiled shapes are
reused); each trajectory is merged with its question row into a record, and
`summarize.write_run` scores and writes the run (trajectories.jsonl, summary.json, results.md,
plots/). The EM table is printed under the line "== EM by dataset ==", followed by the path of
results.md.
"""

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tqdm

from rag_r1_jax import multihost
from rag_r1_jax.data import prompts
from rag_r1_jax.eval import summarize
from rag_r1_jax.rollout.engine import RolloutEngine
from rag_r1_jax.rollout.trajectories import RowRecord
from rag_r1_jax.sampling.sampling_fns import SamplingParams

EM_BANNER = "== EM by dataset =="
GREEDY = SamplingParams(greedy=True)


@dataclasses.dataclass(frozen=True)
class EvalQuestion:
  """One question to evaluate: its dataset, its FlashRAG row fields and its chat prompt."""
  dataset: str
  id: str
  question: str
  golden_answers: list[str]
  prompt: str


def _question_from_row(dataset: str, index: int, row: Mapping[str, Any], tokenizer,
                       prompt_variant: str) -> EvalQuestion:
  """Checks a FlashRAG row and builds its chat prompt; a bad row names dataset and index."""
  where = f"dataset {dataset!r} row {index}"
  for field in ("question", "golden_answers"):
    if field not in row:
      raise ValueError(f"{where} has no {field!r} field (rows need id, question, "
                       "golden_answers)")
  golds = row["golden_answers"]
  golds = [golds] if isinstance(golds, str) else list(golds)
  if not golds or not all(isinstance(g, str) for g in golds):
    raise ValueError(f"{where}: golden_answers must be a non-empty list of strings, "
                     f"got {row['golden_answers']!r}")
  question = str(row["question"])
  try:
    text = prompts.build_prompt(question, prompt_variant)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  return EvalQuestion(dataset, str(row.get("id", index)), question, golds,
                      prompts.apply_chat_template(tokenizer, text))


def build_questions(datasets: Mapping[str, Sequence[Mapping[str, Any]]], tokenizer,
                    prompt_variant: str, max_questions: int = 0) -> list[EvalQuestion]:
  """The first `max_questions` rows (0: all) of every dataset, in dataset then row order."""
  if max_questions < 0:
    raise ValueError(f"max_questions must be >= 0 (config.eval.max_questions), "
                     f"got {max_questions}")
  out = []
  for name, rows in datasets.items():
    count = len(rows) if max_questions == 0 else min(len(rows), max_questions)
    out.extend(_question_from_row(name, i, rows[i], tokenizer, prompt_variant)
               for i in range(count))
  return out


def check_prompt_lengths(engine: RolloutEngine, questions: Sequence[EvalQuestion]) -> None:
  """Fails before any rollout if a prompt cannot fit the sampler's cache."""
  capacity = engine.sampler.capacity
  for q in questions:
    n = len(engine.tokenizer.encode(q.prompt, add_special_tokens=False))
    if n >= capacity:
      raise ValueError(f"{q.dataset} question {q.id!r}: its prompt has {n} tokens, which does "
                       f"not fit the sampler's capacity {capacity} "
                       "(config.rollout.max_total_length)")


def batch_seed(seed: int, batch_index: int) -> int:
  """A per-batch rollout seed derived from (seed, batch_index), independent across batches."""
  return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0] & 0x7FFFFFFF)


def to_record(question: EvalQuestion, row: RowRecord) -> dict:
  """The record `summarize` expects: the question's fields plus the trajectory's."""
  return {
      "dataset": question.dataset, "id": question.id, "question": question.question,
      "golden_answers": list(question.golden_answers),
      "response_text": row.response_text, "answer": row.answer,
      "turns": row.turns, "queries_per_turn": list(row.queries_per_turn),
      "finish_reason": row.finish_reason, "generated_tokens": row.generated_tokens,
      "prompt_tokens": row.prompt_tokens, "total_tokens": row.total_tokens,
      "decode_seconds": row.decode_seconds, "retrieval_seconds": row.retrieval_seconds,
      "total_seconds": row.total_seconds, "compile_seconds": row.compile_seconds,
  }


def rollout_records(engine: RolloutEngine, questions: Sequence[EvalQuestion], *,
                    batch_size: int, sampling: SamplingParams, seed: int = 0,
                    progress: bool = True, warmup: bool = True) -> list[dict]:
  """Rolls out every question once, `batch_size` prompts of one dataset per engine call.

  Records come back in the order of `questions`. With `warmup`, each dataset's first batch is
  also rolled out once untimed before the timed pass (see below).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1 (config.eval.batch_size), got {batch_size}")
  by_dataset: dict[str, list[int]] = {}
  for i, q in enumerate(questions):
    by_dataset.setdefault(q.dataset, []).append(i)
  batches = [idx[start:start + batch_size] for idx in by_dataset.values()
             for start in range(0, len(idx), batch_size)]
  # With `warmup`, the first batch of each dataset, rolled out untimed, compiles the prompt,
  # decode and observation shapes that dataset's batches use and runs each executable once (a
  # fresh executable's first run is slower); the engine's stopwatches leave out any
  # compilation that still happens in a timed batch.
  for idx in by_dataset.values() if warmup else ():
    engine.run([questions[i].prompt for i in idx[:batch_size]], sampling=sampling, seed=seed,
               group_size=1, batch_size=batch_size)
  records: list[dict | None] = [None] * len(questions)
  with tqdm.tqdm(total=len(questions), desc="eval", unit="q", disable=not progress) as bar:
    for k, batch in enumerate(batches):
      rollout = engine.run([questions[i].prompt for i in batch], sampling=sampling,
                           seed=batch_seed(seed, k), group_size=1, batch_size=batch_size)
      assert len(rollout.records) == len(batch), (len(rollout.records), len(batch))
      for row in rollout.records:
        records[batch[row.prompt_index]] = to_record(questions[batch[row.prompt_index]], row)
      bar.update(len(batch))
  return records


def evaluate(engine: RolloutEngine, tokenizer, datasets: Mapping[str, Sequence[Mapping]], *,
             prompt_variant: str, out_dir: str, run_name: str, batch_size: int,
             sampling: SamplingParams | None = None, max_questions: int = 0, seed: int = 0,
             progress: bool = True) -> dict:
  """Evaluates the engine's policy on `datasets` and writes the run under out_dir.

  datasets: name -> rows with id, question, golden_answers (FlashRAG layout). Sampling is
  greedy unless given. `max_questions` keeps the first N rows of each dataset (0: all).
  Datasets without rows are skipped (listed under 'skipped_datasets' in the returned
  summary, which is otherwise the summary.json written under out_dir). In a multi-process
  run every process rolls out every question and process 0 writes the run.
  """
  sampling = sampling or GREEDY
  questions = build_questions(datasets, tokenizer, prompt_variant, max_questions)
  skipped = [name for name in datasets if not any(q.dataset == name for q in questions)]
  if not questions:
    raise ValueError(f"no questions to evaluate: every dataset is empty ({list(datasets)})")
  for name in skipped:
    print(f"eval: dataset {name!r} has no questions; skipped", flush=True)
  check_prompt_lengths(engine, questions)
  records = rollout_records(engine, questions, batch_size=batch_size, sampling=sampling,
                            seed=seed, progress=progress)
  if multihost.is_primary():
    table = summarize.write_run(records, out_dir, run_name)
    results_path = os.path.join(out_dir, summarize.TABLE_FILE)
    print(f"{EM_BANNER}\n{table}\n(written to {results_path})", flush=True)
  multihost.barrier(f"eval run {run_name}")
  with open(os.path.join(out_dir, summarize.SUMMARY_FILE), encoding="utf-8") as f:
    summary = json.load(f)
  summary["skipped_datasets"] = skipped
  return summary
