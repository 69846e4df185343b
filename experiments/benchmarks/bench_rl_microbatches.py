"""One GRPO update of the default world model: the whole batch in one pass vs in microbatches.

Times `rl_update.rl_update` (the update the RL stage runs) on the default config's decoder
(random init, the world tokenizer's vocabulary) for a padded rollout batch of ROWS x SEQ
tokens, once with rl.microbatches=1 and once per other count, alternating the settings in
each repeat round; prints median seconds and the ratio to one pass.
Usage: python experiments/benchmarks/bench_rl_microbatches.py [--rows 256] [--seq 256]
       [--microbatches 1,4,8] [--repeats 3]
"""

import argparse
import tempfile

import common  # (also puts the repository on sys.path)
import bench_update
import jax
import numpy as np

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.training import rl_update, train_state


def make_batch(rows: int, seq: int, vocab: int, group: int) -> dict[str, np.ndarray]:
  """bench_update's padded trajectories plus the sampler log-probs rl_update also reads."""
  batch = bench_update.make_batch(rows, seq, vocab, group)
  rng = np.random.default_rng(1)
  mask = batch["loss_mask"]
  batch["sampler_logprobs"] = (-rng.uniform(0.1, 3.0, mask.shape) * mask).astype(np.float32)
  return batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", type=int, default=256)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--microbatches", default="1,4,8")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  counts = [int(c) for c in args.microbatches.split(",")]
  if 1 not in counts:
    counts = [1] + counts
  base = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(base.mesh)
  group = base.rl.group_size
  if args.rows % group:
    raise SystemExit(f"--rows must be a multiple of the group size {group}")
  ws = Workspace(base, mesh, tempfile.mkdtemp(prefix="bench_rl_micro_"))
  runs = {}
  for count in counts:
    config = rag_r1.get_config("mq")
    config.rl.batch_size = config.rl.mini_batch_size = args.rows // group
    config.rl.microbatches = count
    model = ws.initial_model()  # the same seeded weights; each state owns (and donates) its own
    runs[count] = {"config": config, "state": train_state.create_rl_state(model, config)}
  batch = make_batch(args.rows, args.seq, model.cfg.vocab_size, group)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; default world decoder, "
        f"{args.rows} rows x {args.seq} tokens per GRPO update", flush=True)
  def update(run):
    def fn():
      run["state"], metrics = rl_update.rl_update(run["state"], batch, run["config"])
      jax.block_until_ready(metrics)
    return fn

  seconds = common.alternating_medians({c: update(run) for c, run in runs.items()}, args.repeats)
  for count in counts:
    print(f"  microbatches {count:2d} ({args.rows // count:4d} rows each): {seconds[count]:6.2f} s "
          f"| one pass / this {seconds[1] / seconds[count]:5.2f}x", flush=True)

if __name__ == "__main__":
  main()
