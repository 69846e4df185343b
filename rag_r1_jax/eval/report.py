"""Side-by-side tables of several evaluation runs, optionally next to the paper's Table 3.

    python -m rag_r1_jax.eval.report RUN_DIR [RUN_DIR ...] [--metrics em,f1] [--paper] [--out F]

Each run's numbers are recomputed from the trajectories.jsonl it wrote (not copied from its
summary), one row per run, datasets as columns plus avg. A run missing some datasets gets '-'
there and its avg is over the datasets it has.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from rag_r1_jax.eval import summarize

# RAG-R1 paper, Table 3 (EM, Qwen2.5-7B-Instruct); 'avg' as published (mean of the seven).
PAPER_TABLE3 = {
    "Search-R1": (.387, .422, .531, .377, .351, .135, .376, .368),
    "R1-Searcher": (.404, .410, .522, .442, .513, .158, .368, .402),
    "RAG-R1-sq": (.429, .477, .599, .474, .481, .181, .432, .439),
    "RAG-R1-mq": (.423, .479, .608, .495, .556, .192, .432, .455),
}
PAPER_COLUMNS = summarize.DATASET_ORDER + ("avg",)


def load_run(run_dir: str) -> tuple[str, dict]:
  """(run name, summary recomputed from the run's trajectories)."""
  summary = summarize.summarize(summarize.read_trajectories(run_dir))
  name = os.path.basename(os.path.normpath(run_dir))
  summary_path = os.path.join(run_dir, summarize.SUMMARY_FILE)
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      name = json.load(f).get("run") or name
  return name, summary


def runs_table(runs: Sequence[tuple[str, dict]], metric: str = "em",
               paper: bool = False) -> str:
  """A markdown table of `metric`: one row per run (paper rows first), datasets then avg."""
  if metric not in summarize.METRICS:
    raise ValueError(f"unknown metric {metric!r}; valid: {list(summarize.METRICS)}")
  if paper and metric != "em":
    raise ValueError("the paper's Table 3 reports EM only: use the paper rows with metric 'em'")
  names = set(d for _, s in runs for d in s["datasets"])
  if paper:
    names |= set(summarize.DATASET_ORDER)
  datasets = summarize.ordered_datasets(names)
  label, kind = summarize.METRICS[metric]
  head = [f"run ({label})"] + [summarize.dataset_label(d) for d in datasets] + ["avg"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  if paper:
    for method, values in PAPER_TABLE3.items():
      by_column = dict(zip(PAPER_COLUMNS, values))
      cells = [summarize.format_value(by_column.get(d), kind) for d in datasets + ["avg"]]
      lines.append("| " + " | ".join([f"paper: {method}"] + cells) + " |")
  for name, s in runs:
    values = [s["datasets"][d][metric] if d in s["datasets"] else None for d in datasets]
    cells = [summarize.format_value(v, kind) for v in values]
    cells.append(summarize.format_value(s["avg"][metric], kind))
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines) + "\n"


def report(run_dirs: Sequence[str], metrics: Sequence[str] = ("em",), paper: bool = False) -> str:
  """Markdown with one table per metric over the runs in `run_dirs`."""
  runs = [load_run(d) for d in run_dirs]
  tables = []
  for metric in metrics:
    tables.append(runs_table(runs, metric, paper=paper and metric == "em"))
  return "\n".join(tables)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command line entry point; prints the tables (and writes them with --out)."""
  parser = argparse.ArgumentParser(prog="python -m rag_r1_jax.eval.report",
                                   description="Compare evaluation runs side by side.")
  parser.add_argument("run_dirs", nargs="+", help="run dirs written by the evaluation harness")
  parser.add_argument("--metrics", default="em",
                      help=f"comma-separated, from {','.join(summarize.METRICS)}")
  parser.add_argument("--paper", action="store_true",
                      help="add the paper's Table 3 EM rows to the EM table")
  parser.add_argument("--out", default="", help="also write the markdown to this file")
  args = parser.parse_args(argv)
  metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
  try:
    text = report(args.run_dirs, metrics, paper=args.paper)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text, end="")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
