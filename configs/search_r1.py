"""Search-R1's own setting (its train_grpo.sh / train_ppo.sh), to compare like with like.

Qwen2.5-3B RL from the base checkpoint (no SFT) with Search-R1's single-query prompt, its e5
retriever over its 2018 Wikipedia index (top-3), at most two searches, and its GRPO or PPO
hyperparameters. Paths are the user's: Search-R1's `data/` (parquet files as its
scripts/data_process/nq_search.py writes them), its corpus and FAISS index, e5-base-v2.

  python main.py --config=configs/search_r1.py:grpo \
    --config.model.path=/data/Qwen2.5-3B \
    --config.data.dir=/data/search_r1_data \
    --config.retrieval.encoder_path=/data/e5-base-v2 \
    --config.retrieval.corpus_path=/data/wiki-18.jsonl \
    --config.retrieval.index_path=/data/e5_Flat.index

data.dir holds nq_search/{train,test}.parquet; for Search-R1's later NQ + HotpotQA mix add
`--config.data.train_datasets=nq_hotpotqa_train --config.data.eval_datasets=nq_hotpotqa_train`
(its test.parquet mixes seven sets; evaluation reports each data_source on its own row).

Variants: grpo (default; 5 samples per question, k3 KL in the loss), ppo (GAE with a critic, KL
in the reward). What differs from Search-R1 by design: retrieved tokens are always masked
(its state_masking=true), rollouts hold at most `rollout.rows_in_flight` rows at once (memory,
not a hyperparameter), and W&B logging is off unless `--config.logging.wandb.enabled=true`.
"""

from ml_collections import config_dict

from configs import common


def get_config(variant: str = "grpo") -> config_dict.ConfigDict:
  variant = variant or "grpo"
  if variant not in ("grpo", "ppo"):
    raise ValueError(f"configs/search_r1.py: unknown variant {variant!r}; use grpo or ppo")
  c = common.base_config()
  c.name = f"search_r1_{variant}"
  c.stages = "rl,eval"  # Search-R1 runs RL from the base model, without SFT

  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  # its enable_gradient_checkpointing=true: full remat, as use_qwen2_5 sets
  common.use_qwen2_5(c, "3b", path="/path/to/Qwen2.5-3B")

  c.data.source = "flashrag"
  c.data.dir = "/path/to/search_r1_data"
  c.data.train_datasets = "nq_search"
  c.data.eval_datasets = "nq_search"
  c.data.prompt = "paper_sq"  # Search-R1's prompt, verbatim

  c.retrieval.backend = "faiss"
  c.retrieval.index_type = "flat"
  c.retrieval.encoder_path = "/path/to/e5-base-v2"  # "query: " prefix, mean pooling: inferred
  c.retrieval.corpus_path = "/path/to/wiki-18.jsonl"
  c.retrieval.index_path = "/path/to/e5_Flat.index"
  c.retrieval.max_length = 256  # its retrieval server's query length
  c.retrieval.topk = 3

  c.rollout.mode = "sq"
  c.rollout.max_turns = 2
  c.rollout.max_turn_tokens = 500  # data.max_response_length
  c.rollout.max_obs_length = 500
  c.rollout.max_total_length = 4096  # data.max_prompt_length
  c.rollout.rows_in_flight = 320

  c.sampling.temperature = 1.0
  c.sampling.top_p = 1.0

  ppo = variant == "ppo"
  c.rl.algorithm = variant
  c.rl.steps = 1005  # trainer.total_training_steps
  c.rl.batch_size = 512
  c.rl.mini_batch_size = 256
  c.rl.group_size = 1 if ppo else 5  # rollout.n_agent
  c.rl.microbatches = 4 if ppo else 20  # 64-row microbatches (ppo_micro_batch_size=64)
  c.rl.learning_rate = 1e-6
  c.rl.warmup_ratio = 0.285
  c.rl.schedule = "constant"
  c.rl.weight_decay = 0.01
  c.rl.max_grad_norm = 1.0
  c.rl.clip_eps_low = 0.2
  c.rl.clip_eps_high = 0.2
  c.rl.entropy_coef = 0.001
  c.rl.kl_coef = 0.001
  c.rl.kl_estimator = "k3"  # GRPO: low_var_kl in the loss
  c.rl.kl_reward_estimator = "k1"  # PPO: veRL's kl_penalty='kl' in the reward
  c.rl.kl_ctrl = "fixed"
  c.rl.advantage = "grpo"
  c.rl.loss_agg = "token_mean"
  c.rl.gamma = 1.0
  c.rl.gae_lambda = 1.0
  c.rl.whiten_advantages = True
  c.rl.critic_learning_rate = 1e-5
  c.rl.critic_warmup_ratio = 0.015
  c.rl.value_clip_eps = 0.5  # veRL's critic cliprange_value
  c.rl.reward = "em"
  c.rl.format_reward = 0.0
  c.rl.eval_every = 50  # trainer.test_freq, over the whole test split
  c.rl.eval_questions = 0
  c.checkpoint.every_steps = 100  # trainer.save_freq

  c.eval.batch_size = 256  # data.val_batch_size
  c.eval.greedy = True
  c.eval.max_questions = 0
  return c
