"""The evaluation stage: every policy the run produced, on the test questions, side by side.

Each available policy (sft/model, rl/model; the configured model when neither exists) is
evaluated greedily with the rollout engine; results go to eval/<policy>/ (results.md,
trajectories.jsonl, plots/) and one comparison table to eval/report.md.
"""

import os

from rag_r1_jax import multihost, timing
from rag_r1_jax.eval import harness, report
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.sampling.sampling_fns import SamplingParams


def run(config, mesh, workdir: str, workspace: Workspace | None = None) -> str:
  """Evaluates the run's policies; returns the comparison table (also in eval/report.md)."""
  ws = workspace or Workspace(config, mesh, workdir)
  policies = [(stage, ws.files.load_model(stage)) for stage in ("sft", "rl")]
  policies = [(stage, model) for stage, model in policies if model is not None]
  if not policies:
    print("eval: no trained policy in this run; evaluating the configured model", flush=True)
    policies = [("base", ws.initial_model())]
  datasets = ws.eval_datasets()
  sampling = SamplingParams.from_config(config.sampling, greedy=config.eval.greedy)
  run_dirs = []
  for stage, model in policies:
    out_dir = os.path.join(workdir, "eval", stage)
    sizes = ", ".join(f"{k} ({min(len(v), config.eval.max_questions or len(v))})"
                      for k, v in datasets.items())
    with timing.announce(f"eval: {stage} policy on {sizes} in batches of "
                         f"{config.eval.batch_size} (the first compiles the sampler)"):
      harness.evaluate(ws.engine(model), ws.tokenizer, datasets,
                       prompt_variant=ws.prompt_variant, out_dir=out_dir,
                       run_name=f"{config.name}:{stage}", batch_size=config.eval.batch_size,
                       sampling=sampling, max_questions=config.eval.max_questions,
                       seed=config.seed)
    run_dirs.append(out_dir)
  table = report.report(run_dirs, metrics=("em", "rounds", "seconds"))
  path = os.path.join(workdir, "eval", "report.md")
  if not multihost.is_primary():
    return table
  with open(path, "w") as f:
    f.write(table + "\n")
  print(f"== {config.name}: policies side by side ==\n{table}\n(written to {path})", flush=True)
  return table
