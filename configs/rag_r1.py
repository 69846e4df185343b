"""Default rag_r1_jax config: a tiny decoder learning to search a synthetic world on CPU.

Variants: `--config=configs/rag_r1.py:VARIANT` with VARIANT in
  mq     multi-query prompts and parsing (the default; RAG-R1's contribution)
  sq     single-query prompts (Search-R1's format)
  smoke  the mq pipeline shrunk to run end to end in CI in a couple of minutes
Any field can be overridden: `--config.model.num_layers=2 --config.rl.algorithm=ppo`.
"""

from ml_collections import config_dict

from configs import common


def get_config(variant: str = "mq") -> config_dict.ConfigDict:
  variant = variant or "mq"
  if variant not in ("mq", "sq", "smoke"):
    raise ValueError(f"configs/rag_r1.py: unknown variant {variant!r}; use mq, sq or smoke")
  config = common.base_config()
  config.name = f"rag_r1_{variant}"

  # A small Llama-style decoder trained from scratch with a tokenizer built for the world.
  config.model.source = "scratch"
  config.model.architecture = "llama"
  config.model.vocab_size = 0  # 0: taken from the tokenizer built for the world.
  config.model.hidden_size = 128
  config.model.intermediate_size = 384
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 32
  config.model.max_position_embeddings = 1024
  config.model.rope_theta = 10000.0
  config.model.tie_word_embeddings = True

  config.tokenizer.kind = "world"

  config.data.source = "synthetic_world"
  config.retrieval.backend = "faiss"
  config.retrieval.index_type = "flat"

  config.rollout.mode = "sq" if variant == "sq" else "mq"
  config.rollout.max_total_length = 1024

  if variant == "smoke":
    config.model.hidden_size = 64
    config.model.intermediate_size = 128
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.model.num_kv_heads = 1
    config.sft.epochs = 1
    config.rl.steps = 2
    config.eval.max_questions = 16
  return config
