"""The stages `main.py` runs, in order: sft -> rl -> eval."""

import os
from typing import Callable

from jax.sharding import Mesh

from rag_r1_jax import config_validation


class StageNotAvailableError(RuntimeError):
  """A configured stage that this version cannot run."""


# stage name -> function(config, mesh, workdir); filled in as stages land.
STAGES: dict[str, Callable] = {}


def run(config, mesh: Mesh, workdir: str) -> None:
  requested = config_validation.stages(config)
  missing = [s for s in requested if s not in STAGES]
  if missing:
    raise StageNotAvailableError(
        f"stage(s) {', '.join(missing)} are not implemented in this version yet; "
        f"available: {', '.join(STAGES) or 'none'} (set --config.stages)")
  os.makedirs(workdir, exist_ok=True)
  for stage in requested:
    STAGES[stage](config, mesh, workdir)
