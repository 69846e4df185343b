"""Re-runs every row of README.md's measured-figures table on this machine and prints the table.

  python experiments/benchmarks/run_all.py                  # every row (tens of minutes on 2 cores)
  python experiments/benchmarks/run_all.py --rows decode,rollout --output /tmp/figures.md

Each row runs its benchmark script in a fresh process (so one row's compiles and memory do not
slow the next) and keeps the lines of its output that carry the result. The table opens with
the date, the CPU count, the JAX version and this machine's measured memory copy bandwidth,
so figures from two machines can be told apart. A row that fails or times out says so in its
result column; the others still run.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# name -> (what is measured, script and arguments, patterns of the output lines that hold it).
ROWS = {
    "forward": ("prefill, batch 8 x 256, vs transformers forward",
                ["bench_forward.py"], [r"ratio jax/torch"]),
    "decode": ("decode, new tokens/s vs `generate`",
               ["bench_decode.py", "--repeats", "5"], [r"^\w.*params", r"batch\s+\d+: ours"]),
    "rollout": ("4-turn rollout, cache reuse vs re-prefill",
                ["bench_rollout.py"], [r"^ratio"]),
    "rollout_slots": ("rollout slot use and wall time, synchronous vs continuous schedule, "
                      "long-tailed scripted turns, 64 and 256 slots",
                      ["bench_rollout_slots.py"], [r"^\s*\d+\s+(sync|continuous)\s"]),
    "lora": ("GRPO step, SmolLM2-135M shape, full fine-tuning vs LoRA rank 16",
             ["bench_lora.py", "--repeats", "2"], [r"^(full|lora)\s", r"lora / full"]),
    "update": ("GRPO update vs PyTorch AdamW step",
               ["bench_update.py"], [r"ratio jax/torch"]),
    "sft_packing": ("SFT on the default world, packed rows vs padded batches",
                    ["bench_sft_packing.py"], [r"examples/s"]),
    "rl_microbatches": ("GRPO update of the default model, one pass vs microbatches vs "
                        "length-cut microbatches", ["bench_rl_microbatches.py"],
                        [r"microbatches\s+\d+"]),
    "train_step": ("training step with models/ops.py's backward passes vs autodiff",
                   ["bench_train_step.py"], [r"ops .* autodiff"]),
    "encoder": ("encoder passages/s vs sentence-transformers (`pip install -r "
                "requirements-bench.txt`)", ["bench_encoder.py", "--devices=2", "--threads", "2"],
                [r"ratio"]),
    "hybrid": ("recall@k of dense, BM25 and hybrid retrieval, Wikipedia extracts' descriptions",
               ["bench_hybrid.py", "--stride", "10"], [r"^\s*(dense|bm25|hybrid)"]),
    "retrieval": ("search, 256 queries, top-3, 100k x 384",
                  ["bench_retrieval.py", "--skip_memory"], [r"faiss batched|numpy matmul"]),
}


def copy_bandwidth_gb_s(megabytes: int = 256, repeats: int = 5) -> float:
  """This machine's memory copy bandwidth (read + write bytes per second), best of `repeats`."""
  src = np.ones(megabytes * 2**20 // 8, np.float64)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return 2 * src.nbytes / best / 1e9


def run_row(script_args: list[str], patterns: list[str], timeout: float) -> tuple[str, float]:
  """(the result lines joined with '; ', or why there is none; seconds the row took)."""
  command = [sys.executable, os.path.join(HERE, script_args[0]), *script_args[1:]]
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return f"timed out after {timeout:.0f} s", time.perf_counter() - start
  seconds = time.perf_counter() - start
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {done.returncode}): {last[:200]}", seconds
  keep = [line.strip() for line in done.stdout.splitlines()
          if any(re.search(p, line) for p in patterns)]
  return ("; ".join(keep) or "no result line in the output"), seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default=",".join(ROWS),
                      help=f"comma-separated rows to run, of: {', '.join(ROWS)}")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per row")
  parser.add_argument("--output", default="", help="also write the table to this file")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.rows.split(",") if n.strip()]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    parser.error(f"--rows: unknown {unknown}; valid: {', '.join(ROWS)}")

  import jax  # noqa: E402  (imported late: the rows run in their own processes)
  header = (f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} CPUs "
            f"({jax.devices()[0].platform}), jax {jax.__version__}, memory copy "
            f"{copy_bandwidth_gb_s():.1f} GB/s")
  lines = [header, "", "| what | command | result | seconds |", "|---|---|---|---|"]
  print(header, flush=True)
  for name in names:
    what, script_args, patterns = ROWS[name]
    result, seconds = run_row(script_args, patterns, args.timeout)
    command = "python experiments/benchmarks/" + " ".join(script_args)
    row = f"| {what} | `{command}` | {result} | {seconds:.0f} |"
    print(row, flush=True)
    lines.append(row)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
