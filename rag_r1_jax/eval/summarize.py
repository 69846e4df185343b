"""Scores evaluation trajectories and aggregates them per dataset (the harness' non-rollout half).

Input records (one per question) carry: dataset, id, question, golden_answers, response_text,
answer (extracted, or None), turns (searches made), queries_per_turn (list, one count per
search), finish_reason, generated_tokens, decode_seconds, retrieval_seconds, total_seconds
(the engine's seconds leave out JAX compilation; compile_seconds, when present, is kept in the
trajectories only).
`write_run` writes, under a run dir: trajectories.jsonl (every record with its scores),
summary.json (per-dataset metrics and their unweighted average, the paper's 'avg'),
results.md (a markdown table in the style of the paper's Table 3) and plots/*.png.
"""

import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

from rag_r1_jax.eval import answer_metrics

TRAJECTORIES_FILE = "trajectories.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "results.md"
REQUIRED_FIELDS = ("dataset", "id", "golden_answers", "answer", "turns", "queries_per_turn",
                   "generated_tokens", "decode_seconds", "retrieval_seconds", "total_seconds")
# The paper's Table 3 column order, then any other dataset alphabetically.
DATASET_ORDER = ("nq", "popqa", "triviaqa", "hotpotqa", "2wikimultihopqa", "musique",
                 "bamboogle")
DATASET_LABELS = {"nq": "NQ", "popqa": "PopQA", "triviaqa": "TriviaQA", "hotpotqa": "HotpotQA",
                  "2wikimultihopqa": "2Wiki", "musique": "MuSiQue", "bamboogle": "Bamboogle"}
# metric -> (row label, format kind); 'rate' prints like the paper (.387).
METRICS = {
    "em": ("EM", "rate"),
    "f1": ("F1", "rate"),
    "cover_em": ("cover-EM", "rate"),
    "answer_rate": ("answer rate", "rate"),
    "rounds": ("search rounds / question", "2f"),
    "queries_per_round": ("queries / round", "2f"),
    "generated_tokens": ("generated tokens / question", "1f"),
    "seconds": ("seconds / question", "4f"),
    "decode_seconds": ("- decode", "4f"),
    "retrieval_seconds": ("- retrieval", "4f"),
    "other_seconds": ("- other", "4f"),
    "questions": ("questions", "int"),
}


def score_record(record: dict) -> dict:
  """The record plus its em, f1 and cover_em (from its `answer`; None scores 0)."""
  missing = [f for f in REQUIRED_FIELDS if f not in record]
  if missing:
    raise ValueError(f"trajectory {record.get('id')!r} lacks fields {missing}")
  if len(record["queries_per_turn"]) != record["turns"]:
    raise ValueError(f"trajectory {record['id']!r}: turns={record['turns']} but "
                     f"queries_per_turn has {len(record['queries_per_turn'])} entries")
  answer, golds = record["answer"], record["golden_answers"]
  return {**record,
          "em": answer_metrics.exact_match(answer, golds),
          "f1": answer_metrics.f1(answer, golds),
          "cover_em": answer_metrics.cover_exact_match(answer, golds)}


def _mean(values: Sequence[float]) -> Optional[float]:
  """Arithmetic mean, or None for no values."""
  return sum(values) / len(values) if values else None


def dataset_metrics(scored: Sequence[dict]) -> dict[str, Optional[float]]:
  """METRICS of one dataset's scored records (queries_per_round is None without any search)."""
  rounds = sum(r["turns"] for r in scored)
  queries = sum(sum(r["queries_per_turn"]) for r in scored)
  col = lambda key: [float(r[key]) for r in scored]  # noqa: E731
  other = [r["total_seconds"] - r["decode_seconds"] - r["retrieval_seconds"] for r in scored]
  return {
      "em": _mean(col("em")),
      "f1": _mean(col("f1")),
      "cover_em": _mean(col("cover_em")),
      "answer_rate": _mean([float(r["answer"] is not None) for r in scored]),
      "rounds": rounds / len(scored),
      "queries_per_round": queries / rounds if rounds else None,
      "generated_tokens": _mean(col("generated_tokens")),
      "seconds": _mean(col("total_seconds")),
      "decode_seconds": _mean(col("decode_seconds")),
      "retrieval_seconds": _mean(col("retrieval_seconds")),
      "other_seconds": _mean(other),
      "questions": len(scored),
  }


def ordered_datasets(names: Iterable[str]) -> list[str]:
  """Dataset names in the paper's column order, unknown ones last (alphabetically)."""
  names = set(names)
  known = [d for d in DATASET_ORDER if d in names]
  return known + sorted(names - set(DATASET_ORDER))


def summarize(scored: Sequence[dict]) -> dict[str, Any]:
  """{'datasets': {name: metrics}, 'avg': metrics averaged over datasets (questions: total)}."""
  if not scored:
    raise ValueError("no trajectories to summarize")
  by_dataset: dict[str, list[dict]] = {}
  for record in scored:
    by_dataset.setdefault(record["dataset"], []).append(record)
  datasets = {name: dataset_metrics(by_dataset[name]) for name in ordered_datasets(by_dataset)}
  avg = {}
  for metric in METRICS:
    values = [m[metric] for m in datasets.values() if m[metric] is not None]
    avg[metric] = _mean(values)
  avg["questions"] = len(scored)
  finish = {}
  for record in scored:
    reason = str(record.get("finish_reason"))
    finish[reason] = finish.get(reason, 0) + 1
  return {"datasets": datasets, "avg": avg, "finish_reasons": finish}


def format_value(value: Optional[float], kind: str) -> str:
  """A metric value for a table cell ('-' when undefined)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if kind == "int":
    return str(int(value))
  if kind == "rate":
    text = f"{value:.3f}"
    return text[1:] if text.startswith("0.") else text
  return f"{value:.{kind}}"


def dataset_label(name: str) -> str:
  """The paper's column heading for a dataset."""
  return DATASET_LABELS.get(name, name)


def markdown_table(summary: dict, title: str = "") -> str:
  """Rows of metrics, columns of datasets then avg (the paper's Table 3 turned on its side)."""
  names = list(summary["datasets"])
  head = [title or "metric"] + [dataset_label(n) for n in names] + ["avg"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for metric, (label, kind) in METRICS.items():
    cells = [format_value(summary["datasets"][n][metric], kind) for n in names]
    cells.append(format_value(summary["avg"][metric], kind))
    lines.append("| " + " | ".join([label] + cells) + " |")
  return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file so an interrupted write never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def read_trajectories(run_dir: str) -> list[dict]:
  """The scored records a run wrote."""
  path = os.path.join(run_dir, TRAJECTORIES_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {run_dir} an evaluation run dir?")
  records = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line_no}: bad JSON ({e.msg})") from None
  return records


def write_run(records: Sequence[dict], run_dir: str, run_name: str = "",
              plots: bool = True) -> str:
  """Scores `records`, writes the run's files under run_dir and returns the markdown table."""
  scored = [score_record(r) for r in records]
  summary = summarize(scored)
  run_name = run_name or os.path.basename(os.path.normpath(run_dir))
  summary = {"run": run_name, **summary}
  os.makedirs(run_dir, exist_ok=True)
  _write_atomic(os.path.join(run_dir, TRAJECTORIES_FILE),
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
  _write_atomic(os.path.join(run_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
  table = markdown_table(summary, title=run_name)
  _write_atomic(os.path.join(run_dir, TABLE_FILE), table)
  if plots:
    from rag_r1_jax.eval import plots as plots_lib  # matplotlib only when plotting
    plots_lib.write_plots(scored, summary, os.path.join(run_dir, "plots"))
  return table
