"""PNG plots of an evaluation run: EM by dataset, search rounds, seconds per question.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
headless and leaves a notebook's backend alone.
"""

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rag_r1_jax.eval import summarize

EM_PLOT = "em_by_dataset.png"
ROUNDS_PLOT = "rounds_histogram.png"
SECONDS_PLOT = "seconds_per_question.png"


def _save(fig: Figure, path: str) -> str:
  """Renders `fig` to a PNG at `path`."""
  FigureCanvasAgg(fig)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=100)
  return path


def _columns(summary: dict) -> tuple[list[str], list[dict]]:
  """Column labels (datasets, then avg) and their metric dicts."""
  names = list(summary["datasets"])
  labels = [summarize.dataset_label(n) for n in names] + ["avg"]
  return labels, [summary["datasets"][n] for n in names] + [summary["avg"]]


def plot_em_by_dataset(summary: dict, path: str) -> str:
  """Bars of EM per dataset and their average, value printed on each bar."""
  labels, metrics = _columns(summary)
  values = [m["em"] for m in metrics]
  fig = Figure(figsize=(1.2 * len(labels) + 2, 3.5))
  ax = fig.add_subplot()
  bars = ax.bar(labels, values, color=["tab:blue"] * (len(labels) - 1) + ["tab:gray"])
  ax.bar_label(bars, labels=[summarize.format_value(v, "rate") for v in values], fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("exact match")
  ax.set_title(f"EM by dataset ({summary.get('run', '')})")
  return _save(fig, path)


def plot_rounds_histogram(scored: Sequence[dict], path: str) -> str:
  """Histogram of search rounds per question, one bar group per dataset."""
  names = summarize.ordered_datasets(r["dataset"] for r in scored)
  max_turns = max(int(r["turns"]) for r in scored)
  edges = np.arange(max_turns + 2) - 0.5
  fig = Figure(figsize=(6, 3.5))
  ax = fig.add_subplot()
  ax.hist([[r["turns"] for r in scored if r["dataset"] == n] for n in names], bins=edges,
          label=[summarize.dataset_label(n) for n in names])
  ax.set_xticks(range(max_turns + 1))
  ax.set_xlabel("search rounds")
  ax.set_ylabel("questions")
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_seconds_per_question(summary: dict, path: str) -> str:
  """Stacked bars of mean seconds per question: decode, retrieval, other."""
  labels, metrics = _columns(summary)
  fig = Figure(figsize=(1.2 * len(labels) + 2, 3.5))
  ax = fig.add_subplot()
  bottom = np.zeros(len(labels))
  for key, name in (("decode_seconds", "decode"), ("retrieval_seconds", "retrieval"),
                    ("other_seconds", "other")):
    values = np.array([m[key] for m in metrics], dtype=float)
    ax.bar(labels, values, bottom=bottom, label=name)
    bottom += values
  ax.set_ylabel("seconds / question")
  ax.set_title(f"Seconds per question ({summary.get('run', '')})")
  ax.legend(fontsize=7)
  return _save(fig, path)


def write_plots(scored: Sequence[dict], summary: dict, out_dir: str) -> list[str]:
  """Writes the three plots under out_dir and returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  return [plot_em_by_dataset(summary, os.path.join(out_dir, EM_PLOT)),
          plot_rounds_histogram(scored, os.path.join(out_dir, ROUNDS_PLOT)),
          plot_seconds_per_question(summary, os.path.join(out_dir, SECONDS_PLOT))]
