"""A Flax NNX BERT encoder (BERT, MiniLM, E5, BGE) with Hugging Face safetensors loading.

Post-LayerNorm BERT: embeddings (word + position + token type) -> LayerNorm -> layers of
self-attention and a GELU MLP, each followed by residual + LayerNorm. Pooling and
normalisation are pure functions so the jitted sentence-embedding function stays small.
"""

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT config.json."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> "BertConfig":
    """Reads a config.json dict; refuses architectures this encoder does not implement."""
    model_type = hf.get("model_type", "bert")
    if model_type not in ("bert",):
      raise ValueError(f"encoder config model_type={model_type!r}: only BERT-family encoders "
                       "(BERT, MiniLM, E5, BGE) are supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("encoder config position_embedding_type must be 'absolute', got "
                       f"{hf['position_embedding_type']!r}")
    if hf.get("hidden_act", "gelu") not in _ACTIVATIONS:
      raise ValueError(f"encoder config hidden_act={hf['hidden_act']!r} is not one of "
                       f"{sorted(_ACTIVATIONS)}")
    return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
               num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
               intermediate_size=hf["intermediate_size"],
               max_position_embeddings=hf["max_position_embeddings"],
               type_vocab_size=hf.get("type_vocab_size", 2),
               layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
               hidden_act=hf.get("hidden_act", "gelu"))

  @classmethod
  def from_dir(cls, model_dir: str) -> "BertConfig":
    with open(os.path.join(model_dir, "config.json")) as f:
      return cls.from_hf(json.load(f))


class BertLayer(nnx.Module):
  """Self-attention + MLP, each with residual and post-LayerNorm."""

  def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
    d, eps = cfg.hidden_size, cfg.layer_norm_eps
    self.num_heads = cfg.num_heads
    self.act = cfg.hidden_act
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)  # query, key and value kernels side by side
    self.attn_out = nnx.Linear(d, d, rngs=rngs)
    self.attn_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
    self.mlp_in = nnx.Linear(d, cfg.intermediate_size, rngs=rngs)
    self.mlp_out = nnx.Linear(cfg.intermediate_size, d, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)

  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    """x: [batch, seq, d]; bias: [batch, 1, 1, seq] additive attention mask."""
    b, s, d = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, s, 3, h, d // h)  # [batch, seq, 3, heads, head_dim]
    q = qkv[:, :, 0] * (1 / np.sqrt(d // h)).astype(x.dtype)
    k, v = qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    probs = jax.nn.softmax(logits + bias, axis=-1)  # [batch, heads, seq, seq]
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
    x = self.attn_norm(x + self.attn_out(ctx))
    return self.mlp_norm(x + self.mlp_out(_ACTIVATIONS[self.act](self.mlp_in(x))))


class BertModel(nnx.Module):
  """BERT without the pooler head: token ids -> last hidden states."""

  def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.hidden_size
    self.word_embeddings = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, d, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
    self.embed_norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.num_layers)])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """input_ids, attention_mask: [batch, seq] int32 -> hidden: [batch, seq, d] float32."""
    seq = input_ids.shape[1]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(seq))[None]
         + self.token_type_embeddings(jnp.zeros_like(input_ids)))
    x = self.embed_norm(x)
    neg = jnp.finfo(x.dtype).min
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(x.dtype)
    for layer in self.layers:
      x = layer(x, bias)
    return x


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """hidden: [batch, seq, d], attention_mask: [batch, seq] -> [batch, d] by mean or CLS."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    m = attention_mask.astype(hidden.dtype)[..., None]  # [batch, seq, 1]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
  raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of x: [batch, d] scaled to unit norm (as torch.nn.functional.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embedding(model: BertModel, input_ids: jax.Array, attention_mask: jax.Array,
                       pooling: str, normalize: bool) -> jax.Array:
  """[batch, seq] ids and mask -> [batch, d] pooled (and optionally normalised) embeddings."""
  pooled = pool(model(input_ids, attention_mask), attention_mask, pooling)
  return l2_normalize(pooled) if normalize else pooled


def _strip_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops a leading 'bert.' (BertForX checkpoints) so names start at 'embeddings.'."""
  return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in weights.items()}


def load_hf_weights(model: BertModel, weights: Mapping[str, np.ndarray]) -> None:
  """Copies Hugging Face BertModel tensors into `model`; fails on a missing or misshaped one."""
  w = _strip_prefix(dict(weights))
  used = set()

  def take(name: str, shape: tuple[int, ...], transpose: bool = False) -> jax.Array:
    if name not in w:
      raise ValueError(f"encoder weights are missing {name!r}")
    value = w[name].T if transpose else w[name]
    if value.shape != shape:
      raise ValueError(f"encoder weight {name!r} has shape {value.shape}, expected {shape}")
    used.add(name)
    return jnp.asarray(value, jnp.float32)

  def set_linear(linear: nnx.Linear, name: str) -> None:
    linear.kernel.value = take(f"{name}.weight", linear.kernel.value.shape, transpose=True)
    linear.bias.value = take(f"{name}.bias", linear.bias.value.shape)

  def set_norm(norm: nnx.LayerNorm, name: str) -> None:
    norm.scale.value = take(f"{name}.weight", norm.scale.value.shape)
    norm.bias.value = take(f"{name}.bias", norm.bias.value.shape)

  for attr in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    embed = getattr(model, attr)
    embed.embedding.value = take(f"embeddings.{attr}.weight", embed.embedding.value.shape)
  set_norm(model.embed_norm, "embeddings.LayerNorm")
  for i, layer in enumerate(model.layers):
    p = f"encoder.layer.{i}"
    qkv = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
    d = layer.attn_out.kernel.value.shape[0]
    layer.qkv.kernel.value = jnp.concatenate([take(f"{n}.weight", (d, d), True) for n in qkv], 1)
    layer.qkv.bias.value = jnp.concatenate([take(f"{n}.bias", (d,)) for n in qkv])
    set_linear(layer.attn_out, f"{p}.attention.output.dense")
    set_norm(layer.attn_norm, f"{p}.attention.output.LayerNorm")
    set_linear(layer.mlp_in, f"{p}.intermediate.dense")
    set_linear(layer.mlp_out, f"{p}.output.dense")
    set_norm(layer.mlp_norm, f"{p}.output.LayerNorm")
  ignored = ("pooler.", "embeddings.position_ids")
  unexpected = [k for k in w if k not in used and not k.startswith(ignored)]
  if unexpected:
    raise ValueError(f"encoder weights have tensors this BERT does not use: {unexpected[:5]}")


def load_bert(model_dir: str) -> BertModel:
  """A BertModel from a Hugging Face directory with config.json and model.safetensors."""
  path = os.path.join(model_dir, "model.safetensors")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"encoder directory {model_dir} has no model.safetensors")
  cfg = BertConfig.from_dir(model_dir)
  model = BertModel(cfg, nnx.Rngs(0))
  load_hf_weights(model, load_file(path))
  return model
