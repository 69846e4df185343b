"""The stages `main.py` runs, in order: sft -> rl -> eval, sharing one Workspace.

Each stage's wall time (and the part of it JAX spent tracing and compiling) is printed when
the stages are done and appended (by process 0 of a multi-process run) to
`<workdir>/metrics/stages.jsonl`, one row per stage and invocation, so a resumed run keeps the
times of the runs before it.
"""

import datetime
import json
import os
import time

from jax.sharding import Mesh

from rag_r1_jax import config_validation, multihost, timing


# stage name -> module under rag_r1_jax.runs with `run(config, mesh, workdir, workspace)`.
STAGE_MODULES = {"sft": "sft_stage", "rl": "rl_stage", "eval": "eval_stage"}


def _stage_fn(stage: str):
  import importlib
  return importlib.import_module(f"rag_r1_jax.runs.{STAGE_MODULES[stage]}").run


def format_seconds(seconds: float) -> str:
  """'42.0s' under a minute, else '12m05s' (or '1h02m05s')."""
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def timing_line(rows: list[dict]) -> str:
  """'stage times: sft 11m02s (compile 21.3s) | rl 7m30s (compile 40.1s) | total 18m32s'."""
  parts = [f"{r['stage']} {format_seconds(r['seconds'])} "
           f"(compile {format_seconds(r['compile_seconds'])})" for r in rows]
  total = format_seconds(sum(r["seconds"] for r in rows))
  return "stage times: " + " | ".join(parts + [f"total {total}"])


def run(config, mesh: Mesh, workdir: str) -> list[dict]:
  """Runs the configured stages; returns one timing row per stage (also written to disk)."""
  from rag_r1_jax.runs.workspace import Workspace

  requested = config_validation.stages(config)
  workspace = Workspace(config, mesh, workdir)
  path = os.path.join(workdir, "metrics", "stages.jsonl")
  if multihost.is_primary():
    os.makedirs(os.path.dirname(path), exist_ok=True)
  rows = []
  for stage in requested:
    start, compiled = time.perf_counter(), timing.compile_seconds()
    _stage_fn(stage)(config, mesh, workdir, workspace=workspace)
    row = {"stage": stage, "seconds": round(time.perf_counter() - start, 3),
           "compile_seconds": round(timing.compile_seconds() - compiled, 3),
           "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    rows.append(row)
    if multihost.is_primary():
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
  print(f"rag_r1_jax: {timing_line(rows)}", flush=True)
  return rows
