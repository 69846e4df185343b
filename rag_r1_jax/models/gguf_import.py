"""Import llama.cpp GGUF files (Llama / Qwen2) by converting them to a HF directory once.

The tensors are dequantised to float32 with the `gguf` package; llama.cpp's row permutation
of the Q and K projections (for its interleaved rotary layout) is undone so the result matches
the Hugging Face layout. The converted directory (config.json, model.safetensors, tokenizer)
is cached under ~/.cache/rag_r1_jax/gguf/<sha256 prefix>/ and then loaded like any HF checkpoint.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import tqdm

from rag_r1_jax import multihost, timing
from rag_r1_jax.models import safetensors_io

_CACHE_ENV = "RAG_R1_JAX_CACHE"
_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
}
_BIAS_NAMES = {"attn_q": "self_attn.q_proj.bias", "attn_k": "self_attn.k_proj.bias",
               "attn_v": "self_attn.v_proj.bias"}
_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def cache_root() -> str:
  return os.environ.get(_CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "rag_r1_jax"))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def _unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head interleaving of rotary pairs: [out, in] in HF order."""
  out = w.shape[0]
  return (w.reshape(num_heads, out // num_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def hf_config(gguf_path: str) -> dict:
  """The config.json a conversion of `gguf_path` would write, from the file's header alone
  (no tensor is read): what `main.py --dry_run` sizes a GGUF model by."""
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"GGUF file {gguf_path} does not exist (config.model.path)")
  import gguf
  reader = gguf.GGUFReader(gguf_path)
  return _hf_config(reader, _architecture(reader, gguf_path))


def _architecture(reader, gguf_path: str) -> str:
  arch = _field(reader, "general.architecture")
  if arch not in _ARCHS:
    raise ValueError(f"{gguf_path}: unsupported GGUF architecture {arch!r} "
                     f"(supported: {sorted(_ARCHS)})")
  return arch


def _hf_config(reader, arch: str) -> dict:
  g = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
  heads = int(g("attention.head_count"))
  hidden = int(g("embedding_length"))
  vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  names = {t.name for t in reader.tensors}
  config = {
      "architectures": [_ARCHS[arch]],
      "model_type": arch,
      "vocab_size": vocab,
      "hidden_size": hidden,
      "intermediate_size": int(g("feed_forward_length")),
      "num_hidden_layers": int(g("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(g("attention.head_count_kv", heads)),
      "head_dim": int(g("rope.dimension_count", hidden // heads)),
      "hidden_act": "silu",
      "max_position_embeddings": int(g("context_length", 2048)),
      "rope_theta": float(g("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
      "tie_word_embeddings": "output.weight" not in names,
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
      "torch_dtype": "float32",
  }
  if arch == "llama":
    config["attention_bias"] = "blk.0.attn_q.bias" in names
  return config


def _dequantized_tensors(reader, arch: str) -> dict[str, np.ndarray]:
  from gguf import quants  # the gguf package; imported lazily (only this path needs it)

  heads = int(_field(reader, f"{arch}.attention.head_count"))
  kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
  tensors = {}
  for t in tqdm.tqdm(reader.tensors, desc="dequantise", unit="tensor",
                     disable=not multihost.is_primary()):
    w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
    name = t.name
    if name == "token_embd.weight":
      tensors["model.embed_tokens.weight"] = w
    elif name == "output_norm.weight":
      tensors["model.norm.weight"] = w
    elif name == "output.weight":
      tensors["lm_head.weight"] = w
    elif name.startswith("blk."):
      _, layer, kind, suffix = name.split(".", 3)
      table = _LAYER_NAMES if suffix == "weight" else _BIAS_NAMES
      if kind not in table:
        raise ValueError(f"GGUF tensor {name} is not supported")
      if arch == "llama" and kind in ("attn_q", "attn_k"):
        w = _unpermute(w, heads if kind == "attn_q" else kv_heads)
      tensors[f"model.layers.{layer}.{table[kind]}"] = w
    elif name == "rope_freqs.weight":
      raise ValueError("GGUF files with rope_freqs (llama3 rope scaling) are not supported yet")
    else:
      raise ValueError(f"GGUF tensor {name} is not supported")
  return tensors


def convert_gguf(gguf_path: str, out_dir: str | None = None) -> str:
  """Converts a GGUF file to a HF directory (cached by content hash); returns the directory."""
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
  import gguf

  if out_dir is None:
    out_dir = os.path.join(cache_root(), "gguf", _sha256(gguf_path)[:16])
  if os.path.isfile(os.path.join(out_dir, "COMPLETE")):
    return out_dir
  size = os.path.getsize(gguf_path) / (1 << 20)
  with timing.announce(f"model: converting {os.path.basename(gguf_path)} ({size:.0f} MiB GGUF) "
                       f"to a Hugging Face directory in {out_dir} (first use only)"):
    return _convert(gguf, gguf_path, out_dir)


def _convert(gguf, gguf_path: str, out_dir: str) -> str:
  """convert_gguf's work: read, dequantise, write `out_dir` whole (renamed into place)."""
  reader = gguf.GGUFReader(gguf_path)
  arch = _architecture(reader, gguf_path)
  tensors = _dequantized_tensors(reader, arch)
  timing.say("model: writing model.safetensors and rebuilding the tokenizer from the GGUF "
             "metadata")
  # A directory of this process's own, renamed into place when whole: two processes converting
  # the same file at once (parallel test workers, several hosts on one disk) never mix files.
  tmp = f"{out_dir}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  safetensors_io.save_file(tensors, os.path.join(tmp, "model.safetensors"), {"format": "pt"})
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(_hf_config(reader, arch), f, indent=2)
  _write_tokenizer(gguf_path, tmp)
  open(os.path.join(tmp, "COMPLETE"), "w").close()
  if os.path.isfile(os.path.join(out_dir, "COMPLETE")):  # another process finished first
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
  shutil.rmtree(out_dir, ignore_errors=True)
  try:
    os.replace(tmp, out_dir)
  except OSError:  # another process renamed its copy into place just now
    if not os.path.isfile(os.path.join(out_dir, "COMPLETE")):
      raise
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _write_tokenizer(gguf_path: str, out_dir: str) -> None:
  """Rebuilds the tokenizer (and chat template) from the GGUF metadata via transformers."""
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                            gguf_file=os.path.basename(gguf_path))
  tokenizer.save_pretrained(out_dir)
