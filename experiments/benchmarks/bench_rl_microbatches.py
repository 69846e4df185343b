"""One GRPO update of the default world model: one pass, microbatches, and length-cut ones.

Times `rl_trainer.rl_update` (the update the RL stage runs) on the default config's decoder
(random init, the world tokenizer's vocabulary) for a rollout batch of ROWS x SEQ tokens under
each setting MICROBATCHES:LENGTH_BUCKET (length bucket 0: every microbatch at the batch width;
N: rows sorted by length, each microbatch cut to its longest row rounded up to N), alternating
the settings in each repeat round; prints median seconds and ratios to the first setting.
`--lengths rollout` gives rows the lengths of the default run's RL batches (a 74-token prompt,
a median of ~175 real tokens, and one row in 64 rambling to the full width, which sets the
batch's width); `--lengths uniform` 3/4 to all of SEQ, as bench_update.py.
Usage: python experiments/benchmarks/bench_rl_microbatches.py [--rows 256] [--seq 384]
       [--settings 8:0,1:0,8:64] [--lengths rollout] [--repeats 3]
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
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer

PROMPT = 74  # the default mq prompt's tokens


def rollout_lengths(rows: int, seq: int, rng: np.random.Generator) -> np.ndarray:
  """Real tokens per row like the default run's RL batches (see the module docstring)."""
  lengths = np.clip(rng.normal(175, 30, rows), PROMPT + 8, seq).astype(int)
  lengths[::64] = seq
  return lengths


def make_batch(rows: int, seq: int, vocab: int, group: int, lengths: str) -> dict[str, np.ndarray]:
  """bench_update's trajectories (or rollout-like lengths) plus sampler log-probs."""
  batch = bench_update.make_batch(rows, seq, vocab, group)
  rng = np.random.default_rng(1)
  if lengths == "rollout":
    real = np.arange(seq)[None] < rollout_lengths(rows, seq, rng)[:, None]
    mask = real.astype(np.float32)
    mask[:, :PROMPT] = 0
    mask[:, PROMPT + 20:PROMPT + 60] = 0  # one observation
    batch.update(tokens=batch["tokens"] * real, attention_mask=real.astype(np.int32),
                 loss_mask=mask)
  mask = batch["loss_mask"]
  batch["sampler_logprobs"] = (-rng.uniform(0.1, 3.0, mask.shape) * mask).astype(np.float32)
  return batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", type=int, default=256)
  parser.add_argument("--seq", type=int, default=384)
  parser.add_argument("--settings", default="8:0,1:0,8:64")
  parser.add_argument("--lengths", choices=("rollout", "uniform"), default="rollout")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  settings = [tuple(int(x) for x in s.split(":")) for s in args.settings.split(",")]
  base = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(base.mesh)
  group = base.rl.group_size
  if args.rows % group:
    raise SystemExit(f"--rows must be a multiple of the group size {group}")
  ws = Workspace(base, mesh, tempfile.mkdtemp(prefix="bench_rl_micro_"))
  runs = {}
  for count, bucket in settings:
    config = rag_r1.get_config("mq")
    config.rl.batch_size = config.rl.mini_batch_size = args.rows // group
    config.rl.microbatches, config.rl.length_bucket = count, bucket
    model = ws.initial_model()  # the same seeded weights; each state owns (and donates) its own
    runs[count, bucket] = {"config": config, "state": train_state.create_rl_state(model, config)}
  batch = make_batch(args.rows, args.seq, model.cfg.vocab_size, group, args.lengths)
  real = batch["attention_mask"].sum() / batch["attention_mask"].size
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; default world decoder, "
        f"{args.rows} rows x {args.seq} tokens per GRPO update ({args.lengths} lengths, "
        f"{real:.0%} of them real)", flush=True)

  def update(run):
    def fn():
      run["state"], metrics = rl_trainer.rl_update(run["state"], batch, run["config"])
      jax.block_until_ready(metrics)
    return fn

  seconds = common.alternating_medians({s: update(run) for s, run in runs.items()}, args.repeats)
  first = settings[0]
  for count, bucket in settings:
    cut = f"cut to multiples of {bucket}" if bucket else "at the batch width"
    print(f"  microbatches {count:2d} ({args.rows // count:4d} rows each, {cut:26s}): "
          f"{seconds[count, bucket]:6.2f} s | {first[0]}:{first[1]} / this "
          f"{seconds[first] / seconds[count, bucket]:5.2f}x", flush=True)


if __name__ == "__main__":
  main()
