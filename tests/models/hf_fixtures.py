"""Tiny random Hugging Face models saved to disk, for parity tests."""

import torch
import transformers

_FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
}


def tiny_hf_model(arch: str, tied: bool, out_dir: str, *, layers: int = 2, seed: int = 0,
                  vocab: int = 97, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                  head_dim: int | None = None, bias: bool | None = None,
                  rope_scaling: dict | None = None, sliding_window: int | None = None,
                  max_shard_size: str | None = None, save_dtype=None, **extra):
  """Saves a random llama/qwen2/qwen3/mistral model with non-trivial norms and biases; returns
  it (eval). `bias`: llama's and qwen3's attention_bias; `sliding_window`: mistral's window, or
  a window on every qwen layer; `max_shard_size` (e.g. "20KB"): several files with an index;
  `save_dtype` (e.g. torch.bfloat16): the model is cast to it before saving."""
  torch.manual_seed(seed)
  kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden - 16,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=256, tie_word_embeddings=tied, rope_theta=5000.0,
            rms_norm_eps=1e-6, head_dim=head_dim or hidden // heads, **extra)
  if rope_scaling:
    kw["rope_scaling"] = rope_scaling
  if arch in ("llama", "qwen3"):
    kw["attention_bias"] = bool(bias)
  if arch == "mistral":
    kw["sliding_window"] = sliding_window
  elif sliding_window:
    kw.update(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=0)
  config_cls, model_cls = _FAMILIES[arch]
  model = model_cls(config_cls(**kw))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.2)
      elif "norm" in name:
        p.normal_(1, 0.2)
  model.eval()
  if save_dtype is not None:
    model.to(save_dtype)
  if max_shard_size:
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
  else:
    model.save_pretrained(out_dir)
  return model


def torch_logits(model, tokens, attention_mask=None) -> "numpy.ndarray":
  with torch.no_grad():
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    return model(torch.as_tensor(tokens), attention_mask=mask).logits.float().numpy()
