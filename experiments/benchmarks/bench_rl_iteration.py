"""One RL iteration broken down: rollout (decode / retrieval), old+reference log-probs, update.

Runs the default world setup (configs/rag_r1.py) with a freshly initialised policy, one
warm-up iteration (compilation), then `--iterations` timed ones; prints medians per phase.
Usage: python experiments/benchmarks/bench_rl_iteration.py [--variant mq] [--iterations 3]
"""

import argparse
import statistics
import tempfile
import time

import common  # noqa: F401  (sets sys.path)
import jax

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.runs.rl_stage import trajectory_rewards
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.rl.step import RLHparams


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="mq")
  parser.add_argument("--iterations", type=int, default=3)
  parser.add_argument("--kl_coef", type=float, default=0.001)
  args = parser.parse_args()
  config = rag_r1.get_config(args.variant)
  config.rl.kl_coef = args.kl_coef  # > 0 includes the reference model's forward pass
  mesh = sharding.make_mesh(config.mesh)
  ws = Workspace(config, mesh, tempfile.mkdtemp(prefix="bench_rl_"))
  state = train_state.create_rl_state(ws.initial_model(), config)
  engine = ws.engine(state.model())
  rows = ws.train_rows()
  hp = RLHparams.from_config(config)
  phases = {"rollout": [], "decode": [], "retrieval": [], "score": [], "update": [], "tokens": []}
  for it in range(args.iterations + 1):
    batch_rows = rows[it * config.rl.batch_size:(it + 1) * config.rl.batch_size]
    golds = [r["golden_answers"] for r in batch_rows]
    engine.sampler.update_params(state.params)
    t0 = time.perf_counter()
    rollout = engine.run(ws.prompt_texts(batch_rows), sampling=SamplingParams(), seed=it,
                         group_size=config.rl.group_size, batch_size=config.rl.batch_size)
    rollout_s = time.perf_counter() - t0
    batch = dict(rollout.tensors(), rewards=trajectory_rewards(rollout, golds, "em", 0.0))
    host = rl_trainer._host_batch(batch, hp.mini_batch_rows)
    t0 = time.perf_counter()
    rl_trainer._score_all(state, host, hp, mesh)  # old (+ reference) log-probs alone
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, _ = rl_trainer.rl_update(state, batch, config)
    total_s = time.perf_counter() - t0
    if it == 0:
      print(f"warm-up iteration (compiles): rollout {rollout_s:.2f} s, update {total_s:.2f} s")
      continue
    retrieval_s = sum(r.retrieval_seconds for r in rollout.records)
    phases["rollout"].append(rollout_s)
    phases["retrieval"].append(retrieval_s)
    phases["decode"].append(sum(r.decode_seconds for r in rollout.records))
    phases["score"].append(score_s)
    phases["update"].append(max(total_s - score_s, 0.0))
    phases["tokens"].append(float(rollout.attention_mask.sum()))
  med = {k: statistics.median(v) for k, v in phases.items()}
  total = med["rollout"] + med["score"] + med["update"]
  rows_per_step = config.rl.batch_size * config.rl.group_size
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{rows_per_step} trajectories per step, median {med['tokens']:.0f} tokens")
  for name in ("rollout", "decode", "retrieval", "score", "update"):
    indent = "  " if name in ("decode", "retrieval") else ""
    print(f"{indent}{name:10s} {med[name]:7.2f} s  ({100 * med[name] / total:5.1f}% of the iteration)")
  print(f"iteration  {total:7.2f} s; {med['tokens'] / total:.0f} trajectory tokens/s")


if __name__ == "__main__":
  main()
