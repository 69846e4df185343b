"""One RL step of a Qwen2.5-1.5B-shaped policy on one accelerator: the dry run's per-device
estimate beside the measured peak, and the step's time split into rollout decode, scoring and
update, with tokens/s.

Random weights and token ids, no retrieval: the rollout part decodes `--new` tokens per row
after a `--prompt`-token prefill (one turn), the update part scores and updates a batch of
`--rows` x `--seq` tokens. Each part runs in its own process (`--part`), so the device's
`peak_bytes_in_use` is that part's; the RL train state is on the device in both, as in a run.

Usage: python experiments/benchmarks/bench_gpu_rl_step.py [--rows 64] [--seq 2048]
  [--prompt 256] [--new 256]   (runs both parts, each in a subprocess)
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common  # noqa: F401  (sets sys.path)

QWEN2_5_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                    num_heads=12, num_kv_heads=2, head_dim=128, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
                    tie_word_embeddings=True, architecture="qwen2")


def make_config(args):
  from configs import rag_r1_qwen2_5_7b
  c = rag_r1_qwen2_5_7b.get_config("mq")
  c.model.update(QWEN2_5_1_5B)
  c.model.num_layers = args.layers
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  c.rl.group_size = 4
  c.rl.batch_size = c.rl.mini_batch_size = args.rows // 4
  c.rl.micro_batch_size_per_device = args.micro
  c.rl.length_bucket = 0
  c.rl.offload_during_rollout = False  # the whole RL state stays on the device in both parts
  c.rl.steps = 10
  c.rollout.max_total_length = args.seq
  c.rollout.rows_in_flight = args.rows
  c.rollout.max_turn_tokens = args.new
  return c


def run_part(args) -> dict:
  import jax
  import numpy as np
  from rag_r1_jax import dry_run, sharding
  from rag_r1_jax.models import params as params_lib
  from rag_r1_jax.sampling import sampler as sampler_lib
  from rag_r1_jax.sampling.sampling_fns import SamplingParams
  from rag_r1_jax.training import train_state
  from rag_r1_jax.training.rl import trainer as rl_trainer

  config = make_config(args)
  mesh = sharding.make_mesh(config.mesh)
  cfg, _ = dry_run.model_config(config)
  out = {"part": args.part, "device": str(jax.devices()[0].device_kind)}
  if args.part == "rollout":
    resident = dry_run.per_device_bytes(dry_run.rl_state(config, cfg, mesh))
    estimate = dry_run.rollout_part(config, cfg, mesh, resident)
  else:
    estimate = max(dry_run.rl_parts(config, cfg, mesh), key=lambda p: p.peak)
  out["estimate_gib"] = estimate.peak / dry_run.GIB
  out["estimate_part"] = estimate.name
  state = train_state.create_rl_state(params_lib.init_on_mesh(cfg, mesh, seed=0), config)
  rng = np.random.default_rng(0)
  if args.part == "rollout":
    sampler = sampler_lib.Sampler(state.model(), common.OneCharTokenizer(), capacity=args.seq,
                                  stop_strings_=("</never>",), mesh=mesh)
    settings = sampler_lib.DecodeSettings(SamplingParams(temperature=1.0, top_p=0.95), args.new)
    prompts = [rng.integers(0, cfg.vocab_size, args.prompt).tolist()] * args.rows

    def once():
      s = sampler.append(sampler.init(args.rows, jax.random.key(1)), prompts)
      t0 = time.perf_counter()
      s = sampler.decode(s, settings)
      s.tokens.block_until_ready()
      return time.perf_counter() - t0

    once()  # compile
    seconds = min(once() for _ in range(2))
    out.update(decode_seconds=seconds, new_tokens_per_second=args.rows * args.new / seconds)
  else:
    rows, seq = args.rows, args.seq
    lengths = rng.integers(seq // 2, seq + 1, rows)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = mask.astype(np.float32)
    loss_mask[:, :args.prompt] = 0
    batch = dict(tokens=rng.integers(0, cfg.vocab_size, (rows, seq)) * mask,
                 positions=np.broadcast_to(np.arange(seq), (rows, seq)), attention_mask=mask,
                 loss_mask=loss_mask, sampler_logprobs=-loss_mask,
                 rewards=rng.integers(0, 2, rows).astype(np.float32),
                 group_ids=np.repeat(np.arange(rows // 4), 4))
    state, _ = rl_trainer.rl_update(state, batch, config)  # compile
    jax.block_until_ready(state.params)
    t0 = time.perf_counter()
    state, metrics = rl_trainer.rl_update(state, batch, config)
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - t0
    out.update(update_seconds=seconds, tokens=int(mask.sum()),
               tokens_per_second=float(mask.sum()) / seconds, loss=metrics["loss"])
  stats = jax.devices()[0].memory_stats() or {}
  out["measured_peak_gib"] = stats.get("peak_bytes_in_use", 0) / dry_run.GIB
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", choices=("rollout", "update"), default=None)
  parser.add_argument("--rows", type=int, default=64)
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--prompt", type=int, default=256)
  parser.add_argument("--new", type=int, default=256)
  parser.add_argument("--micro", type=int, default=8, help="rl.micro_batch_size_per_device")
  parser.add_argument("--layers", type=int, default=28, help="fewer for a quick check on CPU")
  args = parser.parse_args()
  if args.part:
    print("RESULT " + json.dumps(run_part(args)), flush=True)
    return
  for part in ("rollout", "update"):
    cmd = [sys.executable, __file__, "--part", part] + [
        f"--{k}={v}" for k, v in vars(args).items() if k != "part"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"{part}: failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
      continue
    r = json.loads(lines[0][len("RESULT "):])
    print(f"{part} on {r['device']}: dry-run estimate ({r['estimate_part']}) "
          f"{r['estimate_gib']:.2f} GiB, measured peak {r['measured_peak_gib']:.2f} GiB; "
          + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)
                      and not k.endswith("gib")), flush=True)


if __name__ == "__main__":
  main()
