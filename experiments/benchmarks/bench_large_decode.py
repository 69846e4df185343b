"""Memory and speed of the sampler's decode for a large config on one accelerator.

Default shape: Qwen2.5-7B-Instruct's config.json (the paper's policy), random weights (decode
time and memory do not depend on the values, and no checkpoint has to travel).

1. Memory, with no weights allocated: `Sampler.decode` is lowered and compiled against abstract
   weights and state, and XLA's memory analysis is printed (arguments = weights + state,
   temporaries, peak = arguments + outputs + temporaries - aliased), for looped and scanned
   layers and for bfloat16 and float32 weights. A scanned model's layers are sliced out of the
   stacked arrays once per call (`Decoder.layer_weights`): this shows what that transient copy
   costs, and what float32 weights under a bfloat16 compute cost.
2. Speed, with random weights (`--run_param_dtype`): decode ms/step and new tokens/s at each
   batch, the device's peak memory, and the fraction of the memory-bandwidth roofline (weight
   + valid KV cache bytes per step over a device-to-device copy's bandwidth).

Usage: python experiments/benchmarks/bench_large_decode.py [--batches 8,64] [--capacity 1024]
  [--analysis_capacity 8192] [--block_size 0] [--run_param_dtype bfloat16] [--skip_run]
"""

import argparse
import statistics
import time

import common  # noqa: F401  (sets sys.path)
import jax
import numpy as np
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import config as config_lib
from rag_r1_jax.models import kv_cache
from rag_r1_jax.models import params as params_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams

# Qwen2.5-7B-Instruct's config.json, the fields our config reads.
QWEN2_5_7B = dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584,
                  intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)
NEVER = "</never-appears-xyz>"
GB = 1e9


def _sampler(model, capacity: int, block_size: int | None = None) -> sampler_lib.Sampler:
  return sampler_lib.Sampler(model, common.OneCharTokenizer(), capacity=capacity,
                             stop_strings_=(NEVER,), eos_token_ids=(), block_size=block_size)


def memory_analysis(cfg, batch: int, capacity: int, settings,
                    block_size: int | None = None) -> str:
  """Compiles decode against abstract weights and state; XLA's buffer sizes in GB."""
  sampler = _sampler(params_lib.abstract_model(cfg), capacity, block_size)
  state = jax.eval_shape(lambda: sampler.init(batch, jax.random.key(0)))
  t0 = time.perf_counter()
  compiled = sampler.lower_decode(sampler.params, state, settings).compile()
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sampler.params))
  cache = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.cache))
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return (f"weights {weights / GB:5.1f}, cache {cache / GB:5.1f} | arguments "
          f"{m.argument_size_in_bytes / GB:5.1f}, outputs {m.output_size_in_bytes / GB:5.1f} "
          f"(aliased {m.alias_size_in_bytes / GB:5.1f}), temporaries "
          f"{m.temp_size_in_bytes / GB:5.1f}, peak {peak / GB:5.1f} GB "
          f"(temporaries / weights {m.temp_size_in_bytes / weights:.2f}; compiled in "
          f"{seconds:.0f} s)")


def speed(cfg, batches, args, settings, bandwidth: float) -> None:
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  t0 = time.perf_counter()
  model = params_lib.init_on_mesh(cfg, mesh, seed=0)
  sampler = _sampler(model, args.capacity, args.block_size or None)
  del model
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sampler.params))
  print(f"  random weights {weight_bytes / GB:.1f} GB made in {time.perf_counter() - t0:.0f} s",
        flush=True)
  kv_token_bytes = (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
                    * np.dtype(cfg.compute_dtype).itemsize)
  for batch in batches:
    prompts = np.random.RandomState(batch).randint(1, cfg.vocab_size, (batch, args.prompt))
    chunks = [row.tolist() for row in prompts]

    def run():
      state = jax.block_until_ready(sampler.init(batch, jax.random.key(0)))
      state = jax.block_until_ready(sampler.append(state, chunks))
      t = time.perf_counter()
      state = jax.block_until_ready(sampler.decode(state, settings))
      return time.perf_counter() - t, state

    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
      seconds, state = run()
      times.append(seconds)
    host = sampler.fetch(state)
    assert (host["lengths"] == args.prompt + args.new).all(), host["lengths"]
    step = statistics.median(times) / args.new
    mean_valid = args.prompt + (args.new + 1) / 2
    step_bytes = weight_bytes + batch * mean_valid * kv_token_bytes
    stats = jax.devices()[0].memory_stats() or {}
    print(f"  batch {batch:3d}: decode {step * 1e3:6.2f} ms/step, {batch / step:8.0f} new tok/s "
          f"| roofline fraction {(step_bytes / bandwidth) / step:.2f} "
          f"({step_bytes / GB:.1f} GB/step) | first call (compiles) {compile_s:.0f} s | device "
          f"peak {stats.get('peak_bytes_in_use', 0) / GB:.1f} GB", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", default="8,64")
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--capacity", type=int, default=1024)
  parser.add_argument("--analysis_batch", type=int, default=64)
  parser.add_argument("--analysis_capacity", type=int, default=8192,
                      help="the 7B config's rollout.max_total_length")
  parser.add_argument("--block_size", type=int, default=0,
                      help="KV-cache block; 0: the sampler's automatic size for the capacity")
  parser.add_argument("--analysis_scan_layers", default="false,true")
  parser.add_argument("--analysis_param_dtypes", default="bfloat16,float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--run_param_dtype", default="bfloat16")
  parser.add_argument("--run_scan_layers", default="false,true")
  parser.add_argument("--skip_run", action="store_true")
  parser.add_argument("--layers", type=int, default=0, help="override the layer count (tests)")
  args = parser.parse_args()
  hf = dict(QWEN2_5_7B)
  if args.layers:
    hf["num_hidden_layers"] = args.layers
  settings = sampler_lib.DecodeSettings(SamplingParams(greedy=True), args.new)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; Qwen2.5-7B shape "
        f"({hf['num_hidden_layers']} layers), compute bfloat16", flush=True)
  block = args.block_size or kv_cache.auto_block_size(args.analysis_capacity)
  print(f"memory analysis of decode, batch {args.analysis_batch}, capacity "
        f"{args.analysis_capacity}, cache blocks of {block}:", flush=True)
  for scan in (s.strip() == "true" for s in args.analysis_scan_layers.split(",")):
    for param_dtype in args.analysis_param_dtypes.split(","):
      cfg = config_lib.from_hf_dict(hf, dtype="bfloat16", param_dtype=param_dtype,
                                    scan_layers=scan)
      print(f"  scan_layers {scan!s:5}, weights {param_dtype:8}: "
            + memory_analysis(cfg, args.analysis_batch, args.analysis_capacity, settings,
                              args.block_size or None),
            flush=True)
  if args.skip_run:
    return
  bandwidth = common.device_copy_bandwidth(1 << 30)
  print(f"copy bandwidth {bandwidth / GB:.0f} GB/s; decode speed, capacity {args.capacity}, "
        f"prompt {args.prompt}, new {args.new}, weights {args.run_param_dtype}:", flush=True)
  batches = [int(b) for b in args.batches.split(",")]
  for scan in (s.strip() == "true" for s in args.run_scan_layers.split(",")):
    print(f" scan_layers {scan}", flush=True)
    cfg = config_lib.from_hf_dict(hf, dtype="bfloat16", param_dtype=args.run_param_dtype,
                                  scan_layers=scan)
    speed(cfg, batches, args, settings, bandwidth)
    jax.clear_caches()


if __name__ == "__main__":
  main()
