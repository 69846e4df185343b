"""The stages `main.py` runs, in order: sft -> rl -> eval, sharing one Workspace."""

from jax.sharding import Mesh

from rag_r1_jax import config_validation


# stage name -> module under rag_r1_jax.runs with `run(config, mesh, workdir, workspace)`.
STAGE_MODULES = {"sft": "sft_stage", "rl": "rl_stage", "eval": "eval_stage"}


def _stage_fn(stage: str):
  import importlib
  return importlib.import_module(f"rag_r1_jax.runs.{STAGE_MODULES[stage]}").run


def run(config, mesh: Mesh, workdir: str) -> None:
  from rag_r1_jax.runs.workspace import Workspace

  requested = config_validation.stages(config)
  workspace = Workspace(config, mesh, workdir)
  for stage in requested:
    _stage_fn(stage)(config, mesh, workdir, workspace=workspace)
