"""Stage-1 SFT on the default world: padded batches vs examples packed into shared rows.

Builds the default config's SFT examples (teacher trajectories over the world's draws plus copy
drills, exactly as the SFT stage does) and times `sft_step.sft_update` on the first STEPS
batches of an epoch, once with padded batches of `--rows` examples and once with packed rows
(`--pack_rows` rows of `--pack_length` tokens), alternating the two in each repeat round.
Prints the share of real tokens, examples per second and the ratio of packed to padded.
Usage: python experiments/benchmarks/bench_sft_packing.py [--steps 40] [--repeats 3]
       [--rows 16] [--pack_rows 8] [--pack_length 256]
"""

import argparse
import tempfile

import common  # (also puts the repository on sys.path)
import jax
import numpy as np

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.runs import sft_stage
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.training import train_state
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.sharding import put_rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rows", type=int, default=16)
  parser.add_argument("--pack_rows", type=int, default=8)
  parser.add_argument("--pack_length", type=int, default=256)
  args = parser.parse_args()
  config = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(config.mesh)
  ws = Workspace(config, mesh, tempfile.mkdtemp(prefix="bench_sft_packing_"))
  examples, _ = sft_data.drop_long(sft_stage.build_examples(ws), args.pack_length)
  real = sum(len(e) for e in examples)
  modes = {"padded": (args.rows, 0), "packed": (args.pack_rows, args.pack_length)}
  runs = {}
  for name, (rows, pack) in modes.items():
    cfg = rag_r1.get_config("mq")
    cfg.sft.batch_size, cfg.sft.pack_length = rows, pack
    steps = sft_data.epoch_steps(examples, rows, cfg.seed, 0, pack)
    hp = sft_step.SFTHparams.from_config(cfg, steps)
    batches = list(sft_data.batches(examples, rows, hp.length_bucket, cfg.seed, 0,
                                    pack_length=pack))
    slots = sum(b["tokens"].size for b in batches)
    timed = batches[:args.steps]
    runs[name] = {"hp": hp, "batches": [put_rows(b, mesh) for b in timed],
                  "examples": sum(_count(b, pack) for b in timed),
                  "state": train_state.create_sft_state(ws.initial_model(), cfg, steps)}
    print(f"{name}: {len(examples)} examples in {steps} steps per epoch, "
          f"{real / slots:.0%} of batch tokens real", flush=True)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; timing the first "
        f"{args.steps} steps of each", flush=True)
  def epoch_start(run):
    def fn():
      for batch in run["batches"]:
        run["state"], metrics = sft_step.sft_update(run["state"], batch, run["hp"])
      jax.block_until_ready(metrics)
    return fn

  seconds = common.alternating_medians({name: epoch_start(run) for name, run in runs.items()},
                                       args.repeats)
  rates = {name: runs[name]["examples"] / seconds[name] for name in runs}
  for name in runs:
    print(f"  {name}: {rates[name]:7.1f} examples/s | / padded "
          f"{rates[name] / rates['padded']:5.2f}x", flush=True)

def _count(batch: dict[str, np.ndarray], pack: int) -> int:
  """Examples in a batch: segments of packed rows, non-empty rows of padded ones."""
  mask = batch["attention_mask"]
  return int(mask.max(axis=1).sum()) if pack else int((mask.sum(axis=1) > 0).sum())


if __name__ == "__main__":
  main()
