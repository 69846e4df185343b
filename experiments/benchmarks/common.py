"""Shared helpers for benchmark scripts: timing with medians, model pairs (ours + PyTorch)."""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# A 12.4M-parameter Qwen2 config (the default run's decoder size), for transformers baselines.
SMALL_QWEN2 = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                   tie_word_embeddings=True)

# SmolLM2-135M-Instruct's shape (its config.json), for random weights where the asset is absent.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


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


def alternating_medians(fns: dict, repeats: int) -> dict:
  """Median seconds of each of `fns` (name -> zero-argument callable), run in turn in every
  round so that a noisy machine slows them alike; round 0 (compiles) is not timed."""
  times = {name: [] for name in fns}
  for round_ in range(repeats + 1):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      if round_:
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _random_hf_dir(name: str, architecture: str, fields: dict) -> str:
  """Saves a randomly initialised transformers model (seed 0) once; returns the directory."""
  import torch
  import transformers
  out = os.path.join(tempfile.gettempdir(), f"rag_r1_jax_bench_{name}")
  if not os.path.isfile(os.path.join(out, "config.json")):
    torch.manual_seed(0)
    model_cls = getattr(transformers, f"{architecture}ForCausalLM")
    config_cls = getattr(transformers, f"{architecture}Config")
    model_cls(config_cls(**fields)).save_pretrained(out)
  return out


def small_qwen2_dir() -> str:
  """The random 12M Qwen2 config, saved with transformers."""
  return _random_hf_dir("qwen2_12m", "Qwen2", SMALL_QWEN2)


def smollm2_random_dir() -> str:
  """Random weights of SmolLM2-135M's shape (a Llama), saved with transformers."""
  return _random_hf_dir("smollm2_random", "Llama", SMOLLM2_135M)


class OneCharTokenizer:
  """Every token decodes to 'a': a stop string of other characters can never appear."""

  def decode(self, ids, **_) -> str:
    return "a" * len(ids)


def device_copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
  """Bytes/s of a jitted copy on JAX's default device, counting the read and the write."""
  import jax
  src = jax.random.normal(jax.random.key(0), (nbytes // 4,))
  copy = jax.jit(lambda x: x + 1)  # one read and one write per element
  return 2 * nbytes / median_seconds(lambda: copy(src).block_until_ready(), repeats)


def smollm2_dir() -> str:
  from rag_r1_jax.assets import asset_path
  from rag_r1_jax.models import gguf_import
  return gguf_import.convert_gguf(asset_path("smollm2_gguf"))


def torch_model(model_dir: str, dtype: str = "float32", device: str = "cpu"):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
  return model.to(device).eval()


def jax_model(model_dir: str, **overrides):
  import jax
  from ml_collections import ConfigDict
  from rag_r1_jax import sharding
  from rag_r1_jax.models import hf_checkpoint
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  return hf_checkpoint.load_hf(model_dir, mesh, **overrides)


def minilm_encoder(max_length: int):
  """(the packaged MiniLM sentence encoder, its mesh): data parallel over every (fake) device.
  Import this module after setting XLA_FLAGS: the mesh is built from jax.devices()."""
  import ml_collections
  from rag_r1_jax import assets, sharding
  from rag_r1_jax.retrieval import encoder
  model_dir = assets.asset_path("minilm_dir")
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  return encoder.SentenceEncoder.from_pretrained(
      model_dir, encoder.infer_spec(model_dir, max_length=max_length), mesh=mesh), mesh
