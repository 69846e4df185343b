"""Per-step scalar metrics: JSONL file, TensorBoard events, a console line, a progress bar.

Layout under workdir: `metrics/<stage>.jsonl` (one `{"step": s, ...scalars}` row per step,
appended and flushed) and `tensorboard/<stage>/` (tensorboardX event files). Host-side
only: pass device scalars after the step (they are converted with float()). In a
multi-process run only process 0 logs; elsewhere the writer and the bar do nothing.
"""

import json
import os
from typing import Any, Mapping, Optional

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from rag_r1_jax import multihost


def _scalar(value: Any) -> float:
  """A Python float from a float, NumPy or JAX scalar (or a size-1 array)."""
  return float(np.asarray(value).reshape(()))


def read_jsonl(path: str) -> list[dict]:
  """The rows of a metrics file; a torn last line (crash mid-write) is skipped."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), int):
        rows.append(row)
  return rows


def format_console_line(stage: str, step: int, scalars: Mapping[str, float],
                        total_steps: Optional[int] = None) -> str:
  """'rl step 12/500 | kl 0.0012 | loss -0.034 | reward 0.41': keys sorted, 4 significant digits."""
  head = f"{stage} step {step}" + (f"/{total_steps}" if total_steps else "")
  parts = [f"{k} {v:.4g}" for k, v in sorted(scalars.items())]
  return " | ".join([head] + parts)


class MetricsWriter:
  """Logs each step's scalars to JSONL, TensorBoard and the console; resumes without duplicates."""

  def __init__(self, workdir: str, stage: str, start_step: int = 0,
               total_steps: Optional[int] = None, console_every: int = 1,
               tensorboard: bool = True):
    """start_step: the first step this run will log; earlier rows are kept, later ones dropped.

    On a restart from a checkpoint at step s, rows with step >= s were written after that
    checkpoint by the crashed run; they are removed from the JSONL file (rewritten atomically)
    and TensorBoard is told to purge its events from step s on.
    """
    if console_every < 0:
      raise ValueError(f"console_every={console_every} must be >= 0 (0: no console lines)")
    self.stage = stage
    self.total_steps = total_steps
    self.console_every = console_every
    self.path = os.path.join(workdir, "metrics", f"{stage}.jsonl")
    self._file = self._tb = None
    if not multihost.is_primary():
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._truncate(start_step)
    self._file = open(self.path, "a")
    if tensorboard:
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage),
                               purge_step=start_step if start_step > 0 else None)

  def _truncate(self, start_step: int) -> None:
    """Keeps only rows with step < start_step (also drops a torn last line)."""
    if not os.path.exists(self.path):
      return
    kept = [r for r in read_jsonl(self.path) if r["step"] < start_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in kept:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs one step's scalars (JSON keeps NaN / inf as NaN / Infinity)."""
    if self._file is None:
      return
    values = {k: _scalar(v) for k, v in scalars.items()}
    self._file.write(json.dumps({"step": int(step), **values}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(f"{self.stage}/{name}", value, global_step=int(step))
    if self.console_every and step % self.console_every == 0:
      tqdm.tqdm.write(format_console_line(self.stage, step, values, self.total_steps))

  def flush(self) -> None:
    """Flushes the JSONL file to the OS and TensorBoard's event queue to disk."""
    if self._file is None:
      return
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs."""
    self.flush()
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress_bar(stage: str, total: int, initial: int = 0,
                 disable: Optional[bool] = None) -> tqdm.tqdm:
  """A tqdm bar over steps [initial, total) named after the stage; disable=None: off if no TTY
  (and off on every process but 0)."""
  if disable is None and not multihost.is_primary():
    disable = True
  return tqdm.tqdm(total=total, initial=initial, desc=stage, unit="step", dynamic_ncols=True,
                   disable=disable)
