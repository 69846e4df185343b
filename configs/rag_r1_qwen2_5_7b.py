"""The paper's setting: Qwen2.5-7B-Instruct, SFT then RL with retrieval over Wikipedia, on a
TPU v5p slice or 8 GPUs. Paths are the user's: a HF model directory, RAG-R1's SFT set (alpaca /
LLaMA-Factory JSON), FlashRAG QA files, and a corpus with its FAISS index (built by FlashRAG or
Search-R1, or with `python -m rag_r1_jax.retrieval build`); every number below is the paper's.

  python main.py --config=configs/rag_r1_qwen2_5_7b.py:mq \
    --config.model.path=/data/Qwen2.5-7B-Instruct \
    --config.sft.data_path=/data/rag_r1/sft.json \
    --config.data.dir=/data/flashrag \
    --config.retrieval.encoder_path=/data/bge-large-en-v1.5 \
    --config.retrieval.corpus_path=/data/wiki-18.jsonl \
    --config.retrieval.index_path=/data/bge_Flat.index

data.dir holds FlashRAG's layout: hotpotqa/train.jsonl (the RL questions; or point
`--config.data.train_datasets` at RAG-R1's RL JSON file) and a test (else dev) file for each of
nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle. main.py checks every path
the configured stages read before loading anything and names each missing one with its field.
`--config.stages=rl,eval` skips SFT (and sft.data_path).

Variants: mq (RAG-R1-mq, default), sq (RAG-R1-sq), ppo (the paper's PPO with a critic).
"""

from ml_collections import config_dict

from configs import common


def get_config(variant: str = "mq") -> config_dict.ConfigDict:
  variant = variant or "mq"
  if variant not in ("mq", "sq", "ppo"):
    raise ValueError(f"configs/rag_r1_qwen2_5_7b.py: unknown variant {variant!r}; use mq, sq or ppo")
  c = common.base_config()
  c.name = f"rag_r1_qwen2_5_7b_{variant}"
  # v5p-32 (16 chips) or 8 GPUs: shard weights over fsdp, keep tensor parallel small.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  common.use_qwen2_5(c, "7b", path="/path/to/Qwen2.5-7B-Instruct")

  c.data.source = "flashrag"
  c.data.dir = "/path/to/flashrag"
  c.data.train_datasets = "hotpotqa"
  mode = "sq" if variant == "sq" else "mq"
  c.data.prompt = f"paper_{mode}"

  c.retrieval.backend = "faiss"
  c.retrieval.index_type = "flat"
  c.retrieval.encoder_path = "/path/to/bge-large-en-v1.5"
  c.retrieval.corpus_path = "/path/to/kilt_passages.jsonl"
  c.retrieval.index_path = "/path/to/bge_flat.index"
  c.retrieval.topk = 3

  c.rollout.mode = mode
  c.rollout.max_turns = 4
  c.rollout.max_queries_per_call = 3
  c.rollout.max_turn_tokens = 500
  c.rollout.max_obs_length = 1000
  c.rollout.max_total_length = 8192
  c.rollout.rows_in_flight = 320

  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.95

  c.sft.data_path = "/path/to/rag_r1_sft.json"
  c.sft.epochs = 5
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-5
  c.sft.max_length = 8192
  c.sft.micro_batch_size_per_device = 1

  c.rl.algorithm = "ppo" if variant == "ppo" else "grpo"
  c.rl.steps = 500
  c.rl.batch_size = 512
  c.rl.mini_batch_size = 128
  c.rl.group_size = 1 if variant == "ppo" else 5
  c.rl.learning_rate = 1e-6
  c.rl.critic_learning_rate = 1e-5
  c.rl.warmup_ratio = 0.285
  c.rl.kl_coef = 0.001
  c.rl.kl_estimator = "k3"
  c.rl.clip_eps_low = 0.2
  c.rl.clip_eps_high = 0.2
  c.rl.entropy_coef = 0.001
  c.rl.gamma = 1.0
  c.rl.gae_lambda = 1.0
  c.rl.reward = "em"
  c.rl.micro_batch_size_per_device = 1
  c.rl.length_bucket = 512
  c.rl.offload_during_rollout = True

  c.eval.max_questions = 0
  c.eval.batch_size = 256
  return c
