"""Shared helpers for benchmark scripts: timing with medians, model pairs (ours + PyTorch)."""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# The 12.4M-parameter Qwen2 config whose transformers figures ASSETS.md quotes.
SMALL_QWEN2 = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                   tie_word_embeddings=True)


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of fn() over `repeats` runs after `warmup` runs."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def small_qwen2_dir() -> str:
  """Saves the random 12M Qwen2 config with transformers; returns the directory."""
  import torch
  import transformers
  out = os.path.join(tempfile.gettempdir(), "rag_r1_jax_bench_qwen2_12m")
  if not os.path.isfile(os.path.join(out, "config.json")):
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL_QWEN2)).save_pretrained(out)
  return out


def smollm2_dir() -> str:
  from rag_r1_jax.assets import asset_path
  from rag_r1_jax.models import gguf_import
  return gguf_import.convert_gguf(asset_path("smollm2_gguf"))


def torch_model(model_dir: str):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def jax_model(model_dir: str, **overrides):
  import jax
  from ml_collections import ConfigDict
  from rag_r1_jax import sharding
  from rag_r1_jax.models import hf_checkpoint
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return hf_checkpoint.load_hf(model_dir, mesh, **overrides)
