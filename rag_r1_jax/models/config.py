"""DecoderConfig: the static description of a Llama / Qwen2 decoder.

Built from a `config.model` ConfigDict or a Hugging Face `config.json`, and written back to
one on export. Frozen and hashable so it can be a static argument of jitted functions.
"""

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture and numerics of one decoder; every field maps to a HF config key."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  architecture: str = "llama"
  max_position_embeddings: int = 2048
  rope_theta: float = 10000.0
  # Hashable form of HF's rope_scaling dict: sorted (key, value) pairs, () for none.
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False  # Llama's attention_bias also adds a bias to o_proj; Qwen2 does not.
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"
  # Cache-free attention over more than N tokens in [N, N] tiles (ops.blocked_attention);
  # 0: always dense. Runtime only (not in config.json); configs/common.py sets the default.
  attention_block: int = 512
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None

  def __post_init__(self):
    problems = []
    if self.architecture not in SUPPORTED_ARCHITECTURES.values():
      problems.append(f"architecture {self.architecture!r} is not one of "
                      f"{sorted(SUPPORTED_ARCHITECTURES.values())}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      if int(getattr(self, name)) <= 0:
        problems.append(f"{name} must be positive, got {getattr(self, name)}")
    if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      problems.append(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                      f"({self.num_kv_heads})")
    if self.head_dim % 2:
      problems.append(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        problems.append(f"{name} {getattr(self, name)!r} is not one of {sorted(DTYPES)}")
    if self.remat not in ("none", "full", "dots"):
      problems.append(f"remat {self.remat!r} is not one of none, full, dots")
    if int(self.attention_block) < 0:
      problems.append(f"attention_block must be >= 0, got {self.attention_block}")
    rope_type = self.rope_scaling_dict.get("rope_type", self.rope_scaling_dict.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
      problems.append(f"rope_scaling type {rope_type!r} is not supported ({SUPPORTED_ROPE_TYPES})")
    if self.o_bias and self.architecture != "llama":
      problems.append("o_bias is only defined for the llama architecture")
    if problems:
      raise ValueError("invalid model config: " + "; ".join(problems))

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def num_groups(self) -> int:
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)


def _freeze(value: Any) -> Any:
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value: Any) -> Any:
  if isinstance(value, tuple) and value and all(
      isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value):
    return {k: _thaw(v) for k, v in value}
  return value


def from_model_config(model_config) -> DecoderConfig:
  """From the `config.model` ConfigDict (architecture fields only)."""
  rope_scaling = model_config.rope_scaling
  rope_scaling = rope_scaling.to_dict() if hasattr(rope_scaling, "to_dict") else dict(rope_scaling or {})
  return DecoderConfig(
      vocab_size=int(model_config.vocab_size),
      hidden_size=int(model_config.hidden_size),
      intermediate_size=int(model_config.intermediate_size),
      num_layers=int(model_config.num_layers),
      num_heads=int(model_config.num_heads),
      num_kv_heads=int(model_config.num_kv_heads),
      head_dim=int(model_config.head_dim),
      architecture=str(model_config.architecture),
      max_position_embeddings=int(model_config.max_position_embeddings),
      rope_theta=float(model_config.rope_theta),
      rope_scaling=_freeze(rope_scaling),
      rms_norm_eps=float(model_config.rms_norm_eps),
      tie_word_embeddings=bool(model_config.tie_word_embeddings),
      qkv_bias=bool(model_config.qkv_bias),
      o_bias=bool(model_config.qkv_bias) and model_config.architecture == "llama",
      dtype=str(model_config.dtype),
      param_dtype=str(model_config.param_dtype),
      scan_layers=bool(model_config.scan_layers),
      remat=str(model_config.remat),
      attention_block=int(model_config.attention_block),
  )


def from_hf_dict(hf: Mapping[str, Any], **overrides) -> DecoderConfig:
  """From a parsed Hugging Face config.json; unsupported architectures are refused."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  family = None
  for arch in archs:
    family = SUPPORTED_ARCHITECTURES.get(arch, family)
  if family is None and model_type in SUPPORTED_ARCHITECTURES.values():
    family = model_type
  if family is None:
    raise ValueError(f"unsupported architecture {archs or model_type!r}: rag_r1_jax supports "
                     f"{sorted(SUPPORTED_ARCHITECTURES)}")
  num_heads = int(hf["num_attention_heads"])
  hidden = int(hf["hidden_size"])
  head_dim = hf.get("head_dim") or hidden // num_heads
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r}: only silu (SwiGLU)")
  llama_bias = family == "llama" and bool(hf.get("attention_bias", False))
  qkv_bias = family == "qwen2" or llama_bias
  if hf.get("mlp_bias"):
    raise ValueError("unsupported config: mlp_bias=True")
  rope_theta = hf.get("rope_theta")
  rope_scaling = dict(hf.get("rope_scaling") or {})
  rope_parameters = hf.get("rope_parameters")
  if isinstance(rope_parameters, Mapping):  # transformers >= 5 layout
    rope_theta = rope_parameters.get("rope_theta", rope_theta)
    extra = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    if extra.get("rope_type", "default") != "default":
      rope_scaling = extra
  fields = dict(
      vocab_size=int(hf["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=num_heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
      head_dim=int(head_dim),
      architecture=family,
      max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
      rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
      rope_scaling=_freeze(rope_scaling),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=qkv_bias,
      o_bias=llama_bias,
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=_freeze(hf.get("eos_token_id")),
  )
  fields.update(overrides)
  return DecoderConfig(**fields)


def load_hf_config(model_dir: str, **overrides) -> DecoderConfig:
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: a Hugging Face model directory needs config.json")
  with open(path) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
  return from_hf_dict(hf, **overrides)


def to_hf_dict(cfg: DecoderConfig) -> dict[str, Any]:
  """The config.json transformers needs to load the exported model."""
  arch = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[cfg.architecture]
  hf = {
      "architectures": [arch],
      "model_type": cfg.architecture,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rope_theta": cfg.rope_theta,
      "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "torch_dtype": cfg.param_dtype,
  }
  if cfg.rope_scaling:
    hf["rope_scaling"] = _thaw(cfg.rope_scaling)
  if cfg.architecture == "llama":
    if cfg.qkv_bias != cfg.o_bias:
      raise ValueError("a llama export needs qkv_bias == o_bias (HF's single attention_bias)")
    hf["attention_bias"] = cfg.qkv_bias
    hf["mlp_bias"] = False
  if cfg.bos_token_id is not None:
    hf["bos_token_id"] = cfg.bos_token_id
  if cfg.eos_token_id is not None:
    eos = cfg.eos_token_id
    hf["eos_token_id"] = list(eos) if isinstance(eos, tuple) else eos
  return hf
