"""DecoderConfig: the static description of a Llama / Qwen2 / Qwen3 / Mistral decoder.

Built from a `config.model` ConfigDict or a Hugging Face `config.json`, and written back to
one on export. Frozen and hashable so it can be a static argument of jitted functions.
"""

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from rag_r1_jax.models import lora

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
}
# Families whose HF attention_bias puts a bias on q, k, v and o alike.
_ATTENTION_BIAS_FAMILIES = ("llama", "qwen3")
# Families whose HF config.json can declare a sliding attention window.
_SLIDING_FAMILIES = ("mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
GENERATION_CONFIG_FILE = "generation_config.json"


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
  # Llama's and Qwen3's attention_bias also adds a bias to o_proj; Qwen2 does not.
  o_bias: bool = False
  # N > 0: a token attends to the N latest positions, itself included (HF's sliding_window,
  # applied to every layer); 0: to all earlier positions.
  sliding_window: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"
  # Cache-free attention over more than N tokens in [N, N] tiles (ops.blocked_attention);
  # 0: always dense. Runtime only (not in config.json); configs/common.py sets the default.
  attention_block: int = 512
  # LoRA adapters (models/lora.py): their rank (0: none), alpha (the scale is alpha / rank) and
  # the projections they adapt (lora.TARGETS keys). Runtime only (not in config.json).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  # What an export carries over from the source checkpoint: the dtype its config.json declared
  # (None: unknown, e.g. a scratch model) and its generation_config.json as compact JSON text
  # ("" if it had none).
  checkpoint_dtype: str | None = None
  generation_config: str = ""

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
    if self.o_bias and self.architecture not in _ATTENTION_BIAS_FAMILIES:
      problems.append(f"o_bias is only defined for the {_ATTENTION_BIAS_FAMILIES} architectures")
    if self.qkv_bias and self.architecture == "mistral":
      problems.append("qkv_bias is not defined for the mistral architecture")
    if int(self.lora_rank) < 0:
      problems.append(f"lora_rank must be >= 0, got {self.lora_rank}")
    targets_ok = self.lora_targets and set(self.lora_targets) <= set(lora.TARGETS)
    if self.lora_rank and not targets_ok:
      problems.append(f"lora_targets {self.lora_targets!r} must be a non-empty subset of "
                      f"{tuple(lora.TARGETS)} when lora_rank > 0")
    if self.lora_rank and not float(self.lora_alpha) > 0:
      problems.append(f"lora_alpha must be positive, got {self.lora_alpha}")
    if int(self.sliding_window) < 0:
      problems.append(f"sliding_window must be >= 0, got {self.sliding_window}")
    if self.sliding_window and self.architecture not in _SLIDING_FAMILIES:
      problems.append(f"sliding_window is only defined for the {_SLIDING_FAMILIES} architectures")
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
  def qk_norm(self) -> bool:
    """Whether queries and keys are RMS-normed per head before the rotary embedding (Qwen3)."""
    return self.architecture == "qwen3"

  @property
  def num_groups(self) -> int:
    return self.num_heads // self.num_kv_heads

  @property
  def lora_projections(self) -> tuple[str, ...]:
    """The projections that carry adapters (none when lora_rank is 0)."""
    return tuple(lora.TARGETS[t] for t in self.lora_targets) if self.lora_rank else ()

  @property
  def lora_scale(self) -> float:
    return float(self.lora_alpha) / self.lora_rank if self.lora_rank else 0.0

  def without_adapters(self) -> "DecoderConfig":
    """This config with no LoRA adapters (the base model's, the merged model's)."""
    return dataclasses.replace(self, lora_rank=0, lora_targets=())

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
      o_bias=bool(model_config.qkv_bias) and model_config.architecture in _ATTENTION_BIAS_FAMILIES,
      dtype=str(model_config.dtype),
      param_dtype=str(model_config.param_dtype),
      scan_layers=bool(model_config.scan_layers),
      remat=str(model_config.remat),
      attention_block=int(model_config.attention_block),
      **lora_fields(model_config),
  )


def lora_fields(model_config) -> dict[str, Any]:
  """The DecoderConfig LoRA fields from the `config.model` ConfigDict."""
  return dict(lora_rank=int(model_config.lora_rank), lora_alpha=float(model_config.lora_alpha),
              lora_targets=lora.parse_targets(model_config.lora_targets))


def _sliding_window(hf: Mapping[str, Any], family: str, num_layers: int) -> int:
  """The window every layer of a HF config uses (0: none); a mix of windowed and full layers
  is refused."""
  if family == "mistral":
    return int(hf.get("sliding_window") or 0)
  if family not in ("qwen2", "qwen3") or not hf.get("use_sliding_window"):
    return 0
  window = int(hf.get("sliding_window") or 0)
  first = int(hf.get("max_window_layers", 28))
  kinds = hf.get("layer_types") or [
      "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
  sliding = {kind == "sliding_attention" for kind in kinds}
  if not window or sliding == {False}:
    return 0
  if sliding == {True}:
    return window
  raise ValueError("unsupported config: use_sliding_window with a window on some layers only "
                   f"(layer_types / max_window_layers={first}); rag_r1_jax applies one window "
                   "to every layer or to none")


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
  # Qwen3Config's head_dim defaults to 128, the others' to hidden_size / heads.
  head_dim = hf.get("head_dim") or (128 if family == "qwen3" else hidden // num_heads)
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r}: only silu (SwiGLU)")
  attention_bias = family in _ATTENTION_BIAS_FAMILIES and bool(hf.get("attention_bias", False))
  qkv_bias = family == "qwen2" or attention_bias
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
  num_layers = int(hf["num_hidden_layers"])
  dtype = hf.get("dtype") or hf.get("torch_dtype")
  fields = dict(
      vocab_size=int(hf["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=num_layers,
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
      o_bias=attention_bias,
      sliding_window=_sliding_window(hf, family, num_layers),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=_freeze(hf.get("eos_token_id")),
      pad_token_id=hf.get("pad_token_id"),
      checkpoint_dtype=dtype if dtype in DTYPES else None,
  )
  fields.update(overrides)
  return DecoderConfig(**fields)


def _read_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_hf_config(model_dir: str, **overrides) -> DecoderConfig:
  """From `model_dir`'s config.json, carrying its generation_config.json when there is one."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: a Hugging Face model directory needs config.json")
  generation_path = os.path.join(model_dir, GENERATION_CONFIG_FILE)
  if os.path.isfile(generation_path) and "generation_config" not in overrides:
    overrides["generation_config"] = json.dumps(_read_json(generation_path), sort_keys=True)
  return from_hf_dict(_read_json(path), **overrides)


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
  if cfg.architecture in _ATTENTION_BIAS_FAMILIES:
    if cfg.qkv_bias != cfg.o_bias:
      raise ValueError(f"a {cfg.architecture} export needs qkv_bias == o_bias (HF's single "
                       "attention_bias)")
    hf["attention_bias"] = cfg.qkv_bias
  if cfg.architecture == "llama":
    hf["mlp_bias"] = False
  window = cfg.sliding_window or None
  if cfg.architecture == "mistral":
    hf["sliding_window"] = window
  elif cfg.architecture in ("qwen2", "qwen3"):
    kind = "sliding_attention" if window else "full_attention"
    hf.update(use_sliding_window=bool(window), sliding_window=window, max_window_layers=0,
              layer_types=[kind] * cfg.num_layers)
  for name in ("bos_token_id", "pad_token_id"):
    if getattr(cfg, name) is not None:
      hf[name] = getattr(cfg, name)
  if cfg.eos_token_id is not None:
    eos = cfg.eos_token_id
    hf["eos_token_id"] = list(eos) if isinstance(eos, tuple) else eos
  return hf
