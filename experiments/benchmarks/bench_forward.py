"""Prefill throughput (tokens/s) of our jitted forward vs the transformers PyTorch forward.

Same weights, same batch (8 x 256 tokens), same process. Prints medians and the ratio.
Usage: python experiments/benchmarks/bench_forward.py [--models small,smollm2] [--repeats 5]
"""

import argparse

import common  # noqa: F401  (sets sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx


def bench(name: str, model_dir: str, batch: int, seq: int, repeats: int) -> None:
  ours, cfg = common.jax_model(model_dir)
  theirs = common.torch_model(model_dir)
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
  graphdef, state = nnx.split(ours)

  @jax.jit
  def forward(state, tokens):
    return nnx.merge(graphdef, state)(tokens)[0]

  jt = jnp.asarray(tokens)
  ours_s = common.median_seconds(lambda: forward(state, jt).block_until_ready(), repeats)
  tt = torch.as_tensor(tokens, dtype=torch.long)

  def torch_forward():
    with torch.inference_mode():
      theirs(tt).logits
  theirs_s = common.median_seconds(torch_forward, repeats)
  n = batch * seq
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  print(f"{name:8s} params={params / 1e6:6.1f}M  batch {batch}x{seq}: "
        f"jax {n / ours_s:9.0f} tok/s ({ours_s * 1e3:7.1f} ms)  "
        f"torch {n / theirs_s:9.0f} tok/s ({theirs_s * 1e3:7.1f} ms)  "
        f"ratio jax/torch {theirs_s / ours_s:5.2f}x", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="small,smollm2")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads")
  dirs = {"small": common.small_qwen2_dir, "smollm2": common.smollm2_dir}
  for name in args.models.split(","):
    bench(name, dirs[name](), args.batch, args.seq, args.repeats)


if __name__ == "__main__":
  main()
