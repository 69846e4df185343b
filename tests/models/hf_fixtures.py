"""Tiny random Hugging Face models saved to disk, for parity tests."""

import torch
import transformers


def tiny_hf_model(arch: str, tied: bool, out_dir: str, *, layers: int = 2, seed: int = 0,
                  vocab: int = 97, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                  bias: bool | None = None, rope_scaling: dict | None = None):
  """Saves a random llama/qwen2 model with non-trivial norms and biases; returns it (eval)."""
  torch.manual_seed(seed)
  kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden - 16,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=256, tie_word_embeddings=tied, rope_theta=5000.0,
            rms_norm_eps=1e-6)
  if rope_scaling:
    kw["rope_scaling"] = rope_scaling
  if arch == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(attention_bias=bool(bias), **kw))
  elif arch == "qwen2":
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
  else:
    raise ValueError(arch)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.2)
      elif "norm" in name:
        p.normal_(1, 0.2)
  model.eval()
  model.save_pretrained(out_dir)
  return model


def torch_logits(model, tokens) -> "numpy.ndarray":
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.float().numpy()
