"""Optional Weights & Biases logging: one W&B run per workdir, every stage's rows in it.

`wandb` is not a dependency: it is imported only when `logging.wandb.enabled`. The run's id is
kept in `<workdir>/metrics/wandb_run_id`, so a restarted or later stage resumes the same W&B
run; each stage's metrics are charted against their own step (`rl/step`, `sft/step`), so
stages that each count from 1 share one run. `WANDB_MODE=offline` (or any other WANDB_*
variable) applies as usual.
"""

import importlib.util
import os
import sys
import uuid
from typing import Any, Mapping

ENABLED_FIELD = "config.logging.wandb.enabled"


def available() -> bool:
  """Whether `import wandb` would succeed (without importing it)."""
  if sys.modules.get("wandb") is not None:
    return True
  return importlib.util.find_spec("wandb") is not None


def _import_wandb():
  if not available():
    raise ImportError(f"{ENABLED_FIELD}=True needs the wandb package: `pip install wandb`, "
                      "or set it to False")
  import wandb
  return wandb


def _run_id(workdir: str) -> str:
  """The workdir's W&B run id, created (and written) on first use."""
  path = os.path.join(workdir, "metrics", "wandb_run_id")
  if os.path.exists(path):
    with open(path) as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  run_id = uuid.uuid4().hex[:16]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(run_id + "\n")
  return run_id


class WandbRun:
  """A W&B run that takes (stage, step, scalars) rows; `finish` ends this process's use of it."""

  def __init__(self, wandb_config, workdir: str, run_name: str, run_config: Mapping[str, Any]):
    """wandb_config: the `logging.wandb` section (project, run_name; empty name: run_name)."""
    self._wandb = _import_wandb()
    self._run = self._wandb.init(
        project=wandb_config.project, name=wandb_config.run_name or run_name,
        id=_run_id(workdir), resume="allow", dir=workdir, config=dict(run_config))
    self._stages: set[str] = set()

  def log(self, stage: str, step: int, scalars: Mapping[str, float]) -> None:
    if stage not in self._stages:
      self._run.define_metric(f"{stage}/step")
      self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
      self._stages.add(stage)
    row = {f"{stage}/{name}": value for name, value in scalars.items()}
    self._run.log({f"{stage}/step": int(step), **row})

  def finish(self) -> None:
    self._run.finish()
