"""Seconds and search rounds per question: a multi-query policy against a single-query one.

Loads the policies two finished runs of configs/rag_r1.py exported (the `:mq` and `:sq`
variants, each with its own prompt, parsing, tokenizer and index) and evaluates both greedily
on the same test questions of each kind, in one process, taking turns in every round so that a
noisy machine slows them alike; round 0 compiles and is not timed. Prints, per question kind,
the median wall seconds per question over the rounds (the whole engine: decoding, retrieval,
observation prefill, host work), search rounds per question, EM, and the mq / sq time ratio.
The per-run eval reports time each variant in its own process, at whatever load the machine
had then; this compares them under the same load.

Usage: python experiments/benchmarks/bench_mq_vs_sq.py --mq_run runs/rag_r1_mq
       --sq_run runs/rag_r1_sq [--stage rl] [--kinds comparison,fanout] [--repeats 3]
"""

import argparse
import statistics
import time

import common  # noqa: F401  (sets sys.path)

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.eval import answer_metrics, harness
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.sampling.sampling_fns import SamplingParams


class Policy:
  """One run's exported policy with its engine and its test questions by kind."""

  def __init__(self, variant: str, run_dir: str, stage: str, kinds: list[str]):
    config = rag_r1.get_config(variant)
    self.config = config
    self.ws = Workspace(config, sharding.make_mesh(config.mesh), run_dir)
    model = self.ws.files.load_model(stage)
    if model is None:
      raise FileNotFoundError(f"{run_dir} has no exported {stage} policy "
                              f"({self.ws.files.model_dir(stage)}): did that stage finish?")
    self.engine = self.ws.engine(model)
    datasets = self.ws.eval_datasets()
    missing = [k for k in kinds if k not in datasets]
    if missing:
      raise ValueError(f"no test questions of kind {missing}; the world has {sorted(datasets)}")
    self.questions = {k: harness.build_questions({k: datasets[k]}, self.ws.tokenizer,
                                                 self.ws.prompt_variant) for k in kinds}
    self.sampling = SamplingParams.from_config(config.sampling, greedy=True)

  def run(self, kind: str) -> tuple[float, list[dict]]:
    """(wall seconds, records) of one greedy pass over the kind's questions."""
    start = time.perf_counter()
    records = harness.rollout_records(self.engine, self.questions[kind],
                                      batch_size=self.config.eval.batch_size,
                                      sampling=self.sampling, seed=self.config.seed,
                                      progress=False, warmup=False)
    return time.perf_counter() - start, records


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mq_run", required=True)
  parser.add_argument("--sq_run", required=True)
  parser.add_argument("--stage", default="rl", choices=("sft", "rl"))
  parser.add_argument("--kinds", default="comparison,fanout")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error("--repeats must be positive")
  kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
  policies = {"mq": Policy("mq", args.mq_run, args.stage, kinds),
              "sq": Policy("sq", args.sq_run, args.stage, kinds)}

  seconds = {(v, k): [] for v in policies for k in kinds}
  records = {}
  for round_ in range(args.repeats + 1):
    for kind in kinds:
      for variant, policy in policies.items():
        elapsed, out = policy.run(kind)
        if round_:
          seconds[variant, kind].append(elapsed / len(out))
        records[variant, kind] = out  # greedy: the same records every round

  print(f"{args.stage} policies, median of {args.repeats} alternating rounds "
        f"(mq {args.mq_run}, sq {args.sq_run})")
  print("| kind | questions | mq ms / q | sq ms / q | mq / sq | mq rounds | sq rounds "
        "| mq EM | sq EM |")
  print("|---|---|---|---|---|---|---|---|---|")
  for kind in kinds:
    row = [kind, str(len(records["mq", kind]))]
    ms = {v: 1000 * statistics.median(seconds[v, kind]) for v in policies}
    row += [f"{ms['mq']:.1f}", f"{ms['sq']:.1f}", f"{ms['mq'] / ms['sq']:.2f}"]
    row += [f"{statistics.mean(r['turns'] for r in records[v, kind]):.2f}" for v in policies]
    for variant in policies:
      em = [answer_metrics.exact_match(r["answer"], r["golden_answers"])
            for r in records[variant, kind]]
      row.append(f"{statistics.mean(em):.3f}")
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  main()
