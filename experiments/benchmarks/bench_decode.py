"""Decode throughput (new tokens/s) of our jitted Sampler vs transformers `generate`.

Same weights, same random prompts, greedy, the same number of new tokens on both sides, same
process. Ours: `Sampler.append` (prefill, reported apart) then `Sampler.decode` (timed alone)
with no stop string or EOS ever hit. Theirs: `generate(min_new_tokens=max_new_tokens)`, which
includes its own prefill, with torch threads = cores and with 1 thread (on a shared, busy
machine actively spinning OpenMP threads made `generate` 5-15x slower, so OMP_WAIT_POLICY
defaults to PASSIVE here); the ratio is taken against the faster of the two. Each of the
`--repeats` rounds runs ours once and theirs once per thread setting, so a change of load on a
shared machine hits both sides alike; every figure is a median over rounds. Also prints the
fraction of the memory-bandwidth roofline: bytes read per decode step (weights + KV cache,
over the full capacity or only the valid length) divided by a numpy copy bandwidth measured
here, and the output projection's time alone (a floor under the step: the same dot
`generate` runs) next to the step time a 3x ratio would need.
On a GPU (jax's default backend), `generate` runs on CUDA too: eager with a dynamic cache, and
with a static cache (which transformers compiles with torch.compile); the ratio is taken against
the faster. The bandwidth is then a device-to-device copy; use `--dtype bfloat16` for both
sides, and `--models small,smollm2_random` where the SmolLM2 GGUF asset is not installed (random
weights of SmolLM2-135M's shape: decode time does not depend on the values).
Usage: python experiments/benchmarks/bench_decode.py [--models small,smollm2] [--batches 8,64]
  [--scan_layers] [--dtype float32|bfloat16]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see docstring

import common  # noqa: F401  (sets sys.path)
import jax
import numpy as np
import torch

from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams

NEVER = "</never-appears-xyz>"


def head_seconds(model, batch: int, steps: int = 64, repeats: int = 5) -> float:
  """Seconds per step of the output projection alone ([batch, hidden] @ [hidden, vocab], the
  decode loop's largest op and the same dot `generate` runs), in a jitted loop of `steps`:
  a floor under our step that no change to the rest of the loop can go below."""
  head = model.output_head()
  x = jax.numpy.ones((batch, head.shape[0]), head.dtype) * 0.01

  @jax.jit
  def loop(x, head):
    def body(_, carry):
      x, acc = carry
      logits = model.logits(x, head)
      return x + 1e-6 * logits[:, :1], acc + logits[:, 0].sum()
    return jax.lax.fori_loop(0, steps, body, (x, jax.numpy.float32(0)))

  run = lambda: jax.block_until_ready(loop(x, head))
  return common.median_seconds(run, repeats) / steps


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
  """Bytes/s of a large copy, counting the read and the write: numpy on a CPU, a jitted copy
  on an accelerator."""
  if jax.default_backend() == "cpu":
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    seconds = common.median_seconds(lambda: np.copyto(dst, src), repeats)
    return 2 * nbytes / seconds
  return common.device_copy_bandwidth(nbytes, repeats)


class _Ours:
  """One timed prefill + decode of our Sampler on fixed prompts."""

  def __init__(self, sampler, prompts: np.ndarray, settings):
    self.sampler, self.prompts, self.settings = sampler, prompts, settings
    self.chunks = [row.tolist() for row in prompts]
    self.state = None

  def run(self) -> tuple[float, float]:
    """(prefill seconds, decode seconds); keeps the final state for `new_tokens`."""
    batch = self.prompts.shape[0]
    state = jax.block_until_ready(self.sampler.init(batch, jax.random.key(0)))
    t0 = time.perf_counter()
    state = jax.block_until_ready(self.sampler.append(state, self.chunks))
    t1 = time.perf_counter()
    self.state = jax.block_until_ready(self.sampler.decode(state, self.settings))
    return t1 - t0, time.perf_counter() - t1

  def new_tokens(self) -> np.ndarray:
    """The generated tokens [batch, new]; checks every row ran to its token budget."""
    host = self.sampler.fetch(self.state)
    prompt_len, new = self.prompts.shape[1], self.settings.max_turn_tokens
    assert (host["lengths"] == prompt_len + new).all(), host["lengths"]
    assert (host["status"] == sampler_lib.TURN_LIMIT).all(), host["status"]
    return host["tokens"][:, prompt_len:prompt_len + new]


class _Theirs:
  """One timed greedy `generate` (prefill included) with a given number of torch threads."""

  def __init__(self, model, prompts: np.ndarray, new: int):
    self.model, self.new = model, new
    self.ids = torch.as_tensor(prompts, dtype=torch.long, device=model.device)
    self.out = None

  def run(self, setting: str, new: int | None = None) -> float:
    """setting: a thread count on a CPU; "eager" or "static" (cache) on CUDA."""
    extra = {}
    if setting == "static":
      extra = dict(cache_implementation="static")
    elif setting != "eager":
      torch.set_num_threads(int(setting))
    n = new or self.new
    _sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
      self.out = self.model.generate(
          input_ids=self.ids, attention_mask=torch.ones_like(self.ids), do_sample=False,
          max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None, **extra)
    _sync()
    return time.perf_counter() - t0

  def new_tokens(self) -> np.ndarray:
    return self.out[:, self.ids.shape[1]:].cpu().numpy()


def _sync() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def bench(name: str, model_dir: str, batches: list[int], args, bandwidth: float) -> None:
  ours, cfg = common.jax_model(model_dir, scan_layers=args.scan_layers, dtype=args.dtype,
                               param_dtype=args.dtype)
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  theirs = common.torch_model(model_dir, dtype=args.dtype, device="cuda" if on_gpu else "cpu")
  capacity = args.capacity
  sampler = sampler_lib.Sampler(ours, common.OneCharTokenizer(), capacity=capacity,
                                stop_strings_=(NEVER,), eos_token_ids=())
  settings = sampler_lib.DecodeSettings(SamplingParams(greedy=True), args.new)
  if on_gpu:
    threads = ["eager", "static"]
  else:
    threads = [str(t) for t in sorted({os.cpu_count() or 1, 1}, reverse=True)]
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(sampler.params))
  kv_token_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(
      cfg.compute_dtype).itemsize
  n_params = sum(x.size for x in jax.tree.leaves(sampler.params))
  print(f"{name}: params {n_params / 1e6:.1f}M ({weight_bytes / 1e6:.0f} MB), "
        f"capacity {capacity}, prompt {args.prompt}, new {args.new}, "
        f"scan_layers {cfg.scan_layers}, dtype {args.dtype}", flush=True)
  for batch in batches:
    prompts = np.random.RandomState(batch).randint(
        1, cfg.vocab_size, (batch, args.prompt)).astype(np.int32)
    ours_run, theirs_run = _Ours(sampler, prompts, settings), _Theirs(theirs, prompts, args.new)
    ours_run.run()  # compiles
    for t in threads:
      theirs_run.run(t, new=4)  # warm-up (a static cache compiles here)
      theirs_run.run(t, new=4)
    prefills, decodes, hf_times = [], [], {t: [] for t in threads}
    for _ in range(args.repeats):  # alternate the sides so load changes hit both alike
      prefill, decode = ours_run.run()
      prefills.append(prefill)
      decodes.append(decode)
      for t in threads:
        hf_times[t].append(theirs_run.run(t))
    our_tokens, hf_tokens = ours_run.new_tokens(), theirs_run.new_tokens()
    prefill_s, decode_s = statistics.median(prefills), statistics.median(decodes)
    hf = {t: statistics.median(hf_times[t]) for t in threads}
    hf_threads = min(hf, key=hf.get)  # the faster torch setting is the baseline
    hf_s = hf[hf_threads]
    round_ratio = statistics.median(
        min(hf_times[t][i] for t in threads) / decodes[i] for i in range(args.repeats))
    n = batch * args.new
    agree = float((our_tokens == hf_tokens).mean())
    step_s = decode_s / args.new
    mean_valid = args.prompt + (args.new + 1) / 2
    cap_bytes = weight_bytes + batch * capacity * kv_token_bytes
    valid_bytes = weight_bytes + batch * mean_valid * kv_token_bytes
    roof = lambda b: (b / bandwidth) / step_s
    head_s = head_seconds(ours, batch)
    print(f"  batch {batch:3d}: ours decode {n / decode_s:8.0f} tok/s ({decode_s * 1e3:7.1f} ms, "
          f"{step_s * 1e3:6.2f} ms/step), prefill {prefill_s * 1e3:6.1f} ms, "
          f"prefill+decode {n / (prefill_s + decode_s):8.0f} tok/s | hf generate "
          + ", ".join(f"{t}{'' if on_gpu else ' threads'} {n / hf[t]:6.0f} tok/s "
                      f"({hf[t] * 1e3:7.1f} ms)" for t in threads)
          + f" | ratio decode/hf(best) {hf_s / decode_s:5.2f}x (per round {round_ratio:5.2f}x), "
          f"(prefill+decode)/hf {hf_s / (prefill_s + decode_s):5.2f}x | roofline fraction "
          f"capacity {roof(cap_bytes):.2f} valid {roof(valid_bytes):.2f} "
          f"({cap_bytes / 1e6:.0f} / {valid_bytes / 1e6:.0f} MB/step) | same tokens {agree:.3f}",
          flush=True)
    print(f"             output projection alone {head_s * 1e3:.2f} ms/step ({head_s / step_s:.0%} "
          f"of ours); 3x hf needs {hf_s / args.new / 3 * 1e3:.2f} ms/step", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="small,smollm2")
  parser.add_argument("--batches", default="8,64")
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--capacity", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="weights, activations and KV cache, on both sides")
  parser.add_argument("--scan_layers", action="store_true",
                      help="load our model with stacked (scanned) layers, as the SmolLM2 and "
                           "Qwen2.5-7B configs do")
  args = parser.parse_args()
  bandwidth = copy_bandwidth()
  if jax.default_backend() == "cpu":
    side = f"with {os.cpu_count()} and 1 threads (the faster is the baseline)"
  else:
    side = "on CUDA, eager and static cache (the faster is the baseline)"
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
        f"{side}; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
  dirs = {"small": common.small_qwen2_dir, "smollm2": common.smollm2_dir,
          "smollm2_random": common.smollm2_random_dir}
  batches = [int(b) for b in args.batches.split(",")]
  for name in args.models.split(","):
    bench(name, dirs[name](), batches, args, bandwidth)


if __name__ == "__main__":
  main()
