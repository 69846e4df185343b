"""Per-step scalar metrics: JSONL file, TensorBoard events, optional W&B, and console progress.

Layout under workdir: `metrics/<stage>.jsonl` (one `{"step": s, ...scalars}` row per step,
appended and flushed) and `tensorboard/<stage>/` (tensorboardX event files); with
`logging.wandb.enabled` the same rows also go to a Weights & Biases run (wandb_run.py).
Host-side only: pass device scalars after the step (they are converted with float()). In a
multi-process run only process 0 logs; elsewhere the writer and the progress do nothing.
"""

import json
import os
import sys
import time
from typing import Any, Mapping, Optional, TextIO

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from rag_r1_jax import multihost
from rag_r1_jax.training import wandb_run


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
  """Logs each step's scalars to JSONL, TensorBoard, W&B and the console; resumes without
  duplicates."""

  def __init__(self, workdir: str, stage: str, start_step: int = 0,
               total_steps: Optional[int] = None, console_every: int = 1,
               tensorboard: bool = True, wandb: Optional[wandb_run.WandbRun] = None):
    """start_step: the first step this run will log; earlier rows are kept, later ones dropped.

    On a restart from a checkpoint at step s, rows with step >= s were written after that
    checkpoint by the crashed run; they are removed from the JSONL file (rewritten atomically)
    and TensorBoard is told to purge its events from step s on. W&B keeps what it was sent,
    so rows up to the crashed run's last step are not sent to it again (a resumed run replays
    them exactly). `wandb` is finished by close().
    """
    if console_every < 0:
      raise ValueError(f"console_every={console_every} must be >= 0 (0: no console lines)")
    self.stage = stage
    self.total_steps = total_steps
    self.console_every = console_every
    self.path = os.path.join(workdir, "metrics", f"{stage}.jsonl")
    self._file = self._tb = None
    self._wandb = wandb
    self._wandb_after = -1  # rows up to this step were already sent to W&B
    if not multihost.is_primary():
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._wandb_after = self._truncate(start_step)
    self._file = open(self.path, "a")
    if tensorboard:
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage),
                               purge_step=start_step if start_step > 0 else None)

  def _truncate(self, start_step: int) -> int:
    """Keeps only rows with step < start_step (also drops a torn last line); returns the
    last step the file held (-1: none)."""
    if not os.path.exists(self.path):
      return -1
    rows = read_jsonl(self.path)
    kept = [r for r in rows if r["step"] < start_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in kept:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, self.path)
    return max((r["step"] for r in rows), default=-1)

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
    if self._wandb is not None and step > self._wandb_after:
      self._wandb.log(self.stage, int(step), values)
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
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def stage_writer(config, workdir: str, stage: str, start_step: int,
                 total_steps: int) -> MetricsWriter:
  """A stage's writer as the config's `logging` section asks (console lines come from
  StepProgress, so the writer prints none)."""
  wandb = None
  if config.logging.wandb.enabled and multihost.is_primary():
    wandb = wandb_run.WandbRun(config.logging.wandb, workdir, config.name, config.to_dict())
  return MetricsWriter(workdir, stage, start_step=start_step, total_steps=total_steps,
                       console_every=0, wandb=wandb)


class StepProgress:
  """A stage's steps on the console: a tqdm bar with a few key metrics on a terminal, else
  (CI logs, files) one plain line every `every` steps and at the last step.

  The bar is drawn on `stream` (stderr by default); whether it is a terminal decides which.
  Nothing is shown on processes other than 0.
  """

  def __init__(self, stage: str, total: int, initial: int = 0, every: int = 10,
               stream: Optional[TextIO] = None, tty: Optional[bool] = None):
    if every < 1:
      raise ValueError(f"every={every} must be >= 1 (config.logging.console_every)")
    stream = stream or sys.stderr
    self.stage, self.total, self.every = stage, total, every
    self.shown = multihost.is_primary()
    self.tty = bool(stream.isatty() if tty is None else tty)
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=stage, unit="step",
                          dynamic_ncols=True, file=stream, disable=not (self.shown and self.tty))
    self._clock = (time.perf_counter(), initial)

  def update(self, step: int, key_metrics: Mapping[str, float]) -> None:
    """Step `step` (1-based) is done; key_metrics: the few values to show."""
    if not self._bar.disable:
      self._bar.set_postfix({k: f"{_scalar(v):.4g}" for k, v in key_metrics.items()},
                            refresh=False)
      self._bar.update(1)
    elif self.shown and (step % self.every == 0 or step == self.total):
      started, first = self._clock
      per_step = (time.perf_counter() - started) / max(step - first, 1)
      values = {k: _scalar(v) for k, v in key_metrics.items()}
      print(f"{format_console_line(self.stage, step, values, self.total)} | "
            f"{per_step:.3g} s/step", flush=True)

  def write(self, text: str) -> None:
    """A line above the bar (or plainly without one)."""
    if self.shown:
      tqdm.tqdm.write(text, file=sys.stdout)
      sys.stdout.flush()

  def close(self) -> None:
    self._bar.close()
