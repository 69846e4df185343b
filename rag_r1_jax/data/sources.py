"""Rows' data_source bookkeeping: counts, groups and per-source means (Search-R1 files mix
sources in one file; tasks/ chooses where rows come from)."""

from typing import Mapping, Sequence

import numpy as np


def comma_list(text: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c']."""
  return [part.strip() for part in str(text).split(",") if part.strip()]


# ---- per-source bookkeeping ------------------------------------------------------------------

def source_of(row: Mapping) -> str:
  """A row's data_source ('' when it has none)."""
  return str(row.get("data_source", "") or "")


def source_counts(rows: Sequence[Mapping]) -> dict[str, int]:
  """{data_source: rows}, in first-seen order."""
  counts: dict[str, int] = {}
  for row in rows:
    counts[source_of(row)] = counts.get(source_of(row), 0) + 1
  return counts


def group_by_source(rows: Sequence[dict]) -> dict[str, list[dict]]:
  """Rows split by data_source, in first-seen order, each group in file order."""
  out: dict[str, list[dict]] = {}
  for row in rows:
    out.setdefault(source_of(row), []).append(row)
  return out


def per_source_means(sources: Sequence[str], **values: Sequence[float]) -> dict[str, float]:
  """{'<name>/<source>': mean} of each named per-row value over each source's rows.

  sources: [rows] the data_source of each row. Empty when the rows carry fewer than two
  sources (the overall means say it all).
  """
  names = list(dict.fromkeys(sources))
  if len(names) < 2:
    return {}
  src = np.asarray(sources, dtype=object)
  out = {}
  for key, vals in values.items():
    vals = np.asarray(vals, np.float64)
    if vals.shape != src.shape:
      raise ValueError(f"{key}: {vals.shape[0]} values for {src.shape[0]} rows")
    for name in names:
      out[f"{key}/{name}"] = float(vals[src == name].mean())
  return out
