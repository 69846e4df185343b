"""The full set of config fields, with defaults shared by every config file.

Every field the code reads is declared here, or by a task for its own section (the synthetic
world's `config.world`: rag_r1_jax/tasks/synthetic_world/__init__.py); config files only change
values. Validation of values and of their consistency lives in `rag_r1_jax/config_validation.py`.
"""

from ml_collections import config_dict

from rag_r1_jax import tasks


def base_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.name = "rag_r1"
  c.seed = 0
  # Stages run in order by main.py; a comma-separated subset of sft,rl,eval.
  c.stages = "sft,rl,eval"

  # Device mesh: axis sizes, -1 for "all remaining devices" (at most one axis).
  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.model = config_dict.ConfigDict()
  # scratch: random init from the fields below; hf: a Hugging Face directory; gguf: a GGUF file.
  c.model.source = "scratch"
  c.model.path = ""
  c.model.architecture = "llama"  # llama | qwen2 | qwen3 | mistral
  c.model.vocab_size = 32000
  c.model.hidden_size = 256
  c.model.intermediate_size = 688
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 64
  c.model.max_position_embeddings = 2048
  c.model.rope_theta = 10000.0
  c.model.rope_scaling = config_dict.ConfigDict()  # {} or HF's rope_scaling dict.
  c.model.rms_norm_eps = 1e-5
  c.model.tie_word_embeddings = False
  c.model.qkv_bias = False
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  c.model.scan_layers = False
  c.model.remat = "none"  # none | full | dots
  # Cache-free forwards (training, scoring) over more than N tokens attend in [N, N] tiles
  # with an online softmax (ops.blocked_attention: no [seq, seq] scores, forward or backward);
  # shorter sequences, and every sequence when 0, use the dense ops.attention.
  c.model.attention_block = 512
  # Training log-probs: N > 0 projects the logits N positions at a time; 0 all at once; -1
  # chunks of AUTO_CHUNK positions whenever all at once would exceed AUTO_MAX_LOGITS floats
  # (rag_r1_jax/training/logprobs.py): a 150k vocabulary over 8192 tokens never materialises.
  c.model.logprob_chunk = -1
  # LoRA (rag_r1_jax/models/lora.py): rank r > 0 adds adapters to the projections named in
  # lora_targets (a comma-separated subset of q,k,v,o,gate,up,down), scaled by lora_alpha / r,
  # and SFT and RL train the adapters alone; the KL reference is the base model (adapters off)
  # and exports merge the adapters into the weights. 0: full fine-tuning.
  c.model.lora_rank = 0
  c.model.lora_alpha = 16.0
  c.model.lora_targets = "q,k,v,o,gate,up,down"

  c.tokenizer = config_dict.ConfigDict()
  # hf: AutoTokenizer from tokenizer.path (or model.path); task: one the task trains for its own
  # texts (tasks/base.py `build_tokenizer`, the synthetic world's), written to <workdir>/tokenizer.
  c.tokenizer.kind = "hf"
  c.tokenizer.path = ""

  c.data = config_dict.ConfigDict()
  c.data.source = "synthetic_world"  # synthetic_world | flashrag | wiki_extracts
  c.data.dir = ""  # dataset names are read as <dir>/<name>/{train,dev,test}.{jsonl,json,parquet}
  # Comma-separated: a name under data.dir, a directory, or one .jsonl/.json/.parquet file.
  c.data.train_datasets = "hotpotqa"
  c.data.eval_datasets = "nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle"
  c.data.tfds_dir = ""  # where prepared tfds data goes; empty: tfds's default
  c.data.prompt = ""  # paper_sq | paper_mq | short_sq | short_mq; empty: paper_<rollout.mode>
  c.data.wiki_articles = 0  # wiki_extracts: the first N articles (0: all 10,033)

  c.retrieval = config_dict.ConfigDict()
  c.retrieval.backend = "faiss"  # faiss | bm25 | hybrid (faiss + bm25, fused) | server
  c.retrieval.server_url = ""
  c.retrieval.corpus_path = ""
  c.retrieval.index_path = ""
  c.retrieval.index_type = "flat"  # flat | hnsw | ivfpq
  c.retrieval.encoder_path = ""
  # Encoder settings; empty / 0 / None: inferred from the model (E5, BGE, MiniLM defaults).
  c.retrieval.pooling = ""  # mean | cls
  c.retrieval.max_length = 0
  c.retrieval.normalize = config_dict.placeholder(bool)
  c.retrieval.query_prefix = config_dict.placeholder(str)
  c.retrieval.passage_prefix = config_dict.placeholder(str)
  c.retrieval.encode_batch_size = 64
  # Each batch is padded to a multiple of this many tokens (compiled shapes <= max_length / it).
  c.retrieval.encode_seq_bucket = 16
  # Index settings.
  c.retrieval.fp16 = False
  c.retrieval.hnsw_m = 32
  c.retrieval.hnsw_ef_search = 128
  c.retrieval.ivf_nlist = 0  # 0: from the corpus size
  c.retrieval.ivf_nprobe = 16
  c.retrieval.pq_m = 0  # 0: dimension / 8
  # hybrid: the faiss index at index_path and BM25 over the same corpus, fused per query.
  c.retrieval.bm25_index_path = ""  # a saved BM25 index directory; empty: built in memory
  c.retrieval.fusion = "rrf"  # rrf: sum of w / (rrf_k + rank) | weighted: min-max scores
  c.retrieval.fusion_dense_weight = 1.0
  c.retrieval.fusion_bm25_weight = 1.0
  c.retrieval.rrf_k = 60.0
  c.retrieval.fusion_depth = 20  # candidates from each retriever before fusion (>= topk)
  c.retrieval.topk = 3
  c.retrieval.timeout_s = 30.0
  c.retrieval.max_retries = 3

  c.rollout = config_dict.ConfigDict()
  c.rollout.mode = "mq"  # mq: up to max_queries_per_call queries per <search>; sq: one.
  c.rollout.max_turns = 4
  c.rollout.max_queries_per_call = 3
  c.rollout.max_query_chars = 512
  c.rollout.max_turn_tokens = 500
  c.rollout.max_obs_length = 1000
  c.rollout.mq_json_indent = 2  # RAG-R1's indented JSON observation; 0 writes it on one line
  c.rollout.max_total_length = 4096
  # Rows the sampler decodes at once (its batch; a multiple of rl.group_size and of the mesh's
  # data x fsdp); an RL step's or an evaluation's rows run through it in chunks of this many,
  # so the KV cache is sized by it, not by the batch. 0: all rows of a call at once.
  c.rollout.rows_in_flight = 0
  # How rows share the sampler's slots (rows_in_flight of them; 0: every row of a call).
  # sync: decode until every row's turn has stopped, one retrieval call for all searching rows,
  # resume; a slot stays taken until its whole chunk of rows is done. continuous: decode in
  # calls of decode_chunk_steps steps; at each boundary finished rows' slots take the next
  # prompts (a GRPO group as a whole) and the rows that searched since the last call go to the
  # retriever in one call on a host thread while the others decode. Same trajectories; a
  # single-process run only (rag_r1_jax/rollout/continuous.py).
  c.rollout.schedule = "sync"
  c.rollout.decode_chunk_steps = 16
  # KV-cache positions per block; 0: automatic (128, or capacity / 16 rounded up to a power of
  # two for long capacities, which bounds compile time: see kv_cache.auto_block_size).
  c.rollout.cache_block_size = 0

  c.sampling = config_dict.ConfigDict()
  # RL rollouts draw from softmax(logits / temperature), and the update scores every log-prob
  # (policy, old, reference) and entropy at the same temperature (veRL's rollout.temperature).
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.95
  c.sampling.top_k = 0
  c.sampling.greedy = False

  c.sft = config_dict.ConfigDict()
  c.sft.data_path = ""  # alpaca / LLaMA-Factory JSON; empty: generate with the teacher.
  c.sft.epochs = 5
  c.sft.batch_size = 16
  c.sft.learning_rate = 1e-4
  c.sft.warmup_ratio = 0.05
  c.sft.schedule = "cosine"
  c.sft.weight_decay = 0.0
  c.sft.max_grad_norm = 1.0
  c.sft.validation_fraction = 0.1
  c.sft.cut_subsamples = True  # the paper's recipe: one example per policy turn
  c.sft.microbatches = 1
  # N > 0: microbatches of N rows per device (veRL's micro_batch_size_per_gpu), i.e.
  # sft.batch_size / (N x mesh data x fsdp) of them; overrides sft.microbatches.
  c.sft.micro_batch_size_per_device = 0
  c.sft.length_bucket = 64  # pad SFT batches to a multiple of this many tokens
  c.sft.max_length = 1024
  c.sft.max_nonfinite_steps = 5  # halt after this many skipped (non-finite) steps in a row
  c.sft.pack_length = 0  # N: pack examples into rows of N tokens (>= max_length); 0: pad
  c.sft.max_examples = 0  # N > 0: train on N examples drawn (seeded) from all; 0: all

  c.rl = config_dict.ConfigDict()
  c.rl.algorithm = "grpo"  # grpo | ppo
  c.rl.steps = 500
  c.rl.batch_size = 512  # questions per step (each sampled group_size times)
  c.rl.mini_batch_size = 128  # questions per optimizer update
  c.rl.group_size = 5
  # Prompts rolled out per step = oversample x batch_size; the update takes batch_size groups,
  # those whose rewards differ first (rag_r1_jax/rl/group_filter.py): DAPO's dynamic sampling,
  # with one fixed oversampling instead of re-sampling until the batch is full. 1.0: all.
  c.rl.oversample = 1.0
  c.rl.epochs_per_batch = 1
  # Optimizers (AdamW; veRL's actor/critic .optim): linear warmup over rl.warmup_steps updates,
  # or rl.warmup_ratio of them when negative; cosine decays to min_lr_ratio x the peak.
  c.rl.learning_rate = 1e-6
  c.rl.critic_learning_rate = 1e-5
  c.rl.warmup_ratio = 0.285
  c.rl.warmup_steps = -1
  c.rl.schedule = "constant"  # constant | cosine
  c.rl.min_lr_ratio = 0.0
  c.rl.adam_b1 = 0.9  # the betas of both optimizers
  c.rl.adam_b2 = 0.999
  c.rl.max_grad_norm = 1.0  # <= 0: no clipping
  c.rl.weight_decay = 0.01  # both optimizers
  # The critic's own settings (PPO); 0 / negative: as the actor's field it names.
  c.rl.critic_max_grad_norm = 1.0
  c.rl.critic_epochs = 0  # 0: rl.epochs_per_batch
  c.rl.critic_mini_batch_size = 0  # questions per critic update; 0: rl.mini_batch_size
  c.rl.critic_warmup_ratio = -1.0  # negative: rl.warmup_ratio
  c.rl.critic_warmup_steps = -1  # negative: from rl.critic_warmup_ratio
  # KL to the frozen reference: in the loss for GRPO (rl.kl_estimator), in the token rewards for
  # PPO (rl.kl_reward_estimator, coefficient fixed or adaptive: rag_r1_jax/rl/kl_control.py).
  c.rl.kl_coef = 0.001
  c.rl.kl_estimator = "k3"  # k1 | k2 | k3 (k3 clamped to [-10, 10])
  c.rl.kl_reward_estimator = "k3"  # k1 | k2 | k3 (veRL's default is k1)
  c.rl.kl_ctrl = "fixed"  # fixed | adaptive
  c.rl.kl_target = 0.1  # adaptive: the per-token KL the coefficient steers towards
  c.rl.kl_horizon = 10000  # adaptive: rows over which the coefficient moves by at most 20%
  c.rl.policy_loss = "vanilla"  # vanilla (clipped ratio) | gspo (sequence-level ratio)
  c.rl.clip_eps_low = 0.2
  c.rl.clip_eps_high = 0.2
  # Dual clip: for negative advantages the token loss is capped at -A x clip_ratio_c (> 1;
  # veRL's default 3), so a token whose ratio exploded passes no gradient. 0: off.
  c.rl.clip_ratio_c = 0.0
  c.rl.value_clip_eps = 0.2
  c.rl.entropy_coef = 0.001
  c.rl.gamma = 1.0
  c.rl.gae_lambda = 1.0
  c.rl.advantage = "grpo"  # grpo | dr_grpo
  # token_mean | token_sum | seq_mean_token_mean | seq_mean_token_sum | seq_sum_norm
  c.rl.loss_agg = "token_mean"
  c.rl.loss_norm_length = 0  # seq_sum_norm's constant; 0: the padded length
  c.rl.whiten_advantages = True  # PPO: normalise advantages over the batch
  # Rollout correction: each token's policy loss times min(pi_old / pi_sampler, threshold),
  # the ratio per token or per sequence, for samplers whose log-probs drift from the trainer's
  # (bfloat16, other kernels). "": off.
  c.rl.rollout_is = ""  # "" | token | sequence
  c.rl.rollout_is_threshold = 2.0
  c.rl.reward = "em"  # em | f1 | cover_em | sub_em
  c.rl.format_reward = 0.0
  c.rl.microbatches = 1
  # N > 0: microbatches of N rows per device, i.e. rl.mini_batch_size x rl.group_size /
  # (N x mesh data x fsdp) of them; overrides rl.microbatches.
  c.rl.micro_batch_size_per_device = 0
  # How microbatch losses add up to an update's. global: each weighs its share of the
  # minibatch's aggregate (tokens for token_mean, rows with tokens for the seq_* modes), so
  # the loss and gradient are the minibatch's own whatever the split; mean: each 1 / count.
  c.rl.microbatch_weighting = "global"
  # N > 0: the update sorts a minibatch's rows by length and cuts each microbatch to its own
  # longest row, rounded up to a multiple of N tokens (one compilation per width).
  # 0: every microbatch at the batch width.
  c.rl.length_bucket = 0
  c.rl.max_nonfinite_steps = 5
  # Keep the optimizer state and the reference model in host memory while rolling out (they are
  # read only by scoring and the update), leaving the device's memory to the sampler's weights
  # and KV cache (veRL offloads likewise). Costs two host <-> device copies of them per step.
  c.rl.offload_during_rollout = False
  # Validation (Search-R1's test_freq): every N steps the policy answers the first
  # rl.eval_questions questions of each evaluation dataset (0: all) greedily, and 'val/...'
  # metrics (EM, answer rate, searches; per dataset when there are several) join that step's
  # row. 0: off.
  c.rl.eval_every = 0
  c.rl.eval_questions = 64

  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  # The Hugging Face directory each stage exports (hf_checkpoint.export_hf): weights on disk as
  # auto (the source checkpoint's declared dtype, e.g. bfloat16 for a bf16 model; a scratch
  # model's model.param_dtype) | float32 | bfloat16 | float16.
  c.export = config_dict.ConfigDict()
  c.export.dtype = "auto"

  c.eval = config_dict.ConfigDict()
  c.eval.max_questions = 0  # 0: all
  c.eval.batch_size = 32
  c.eval.greedy = True

  # Metrics go to <workdir>/metrics/*.jsonl and TensorBoard always; a stage's steps show as a
  # progress bar on a terminal, else as one line every logging.console_every steps.
  c.logging = config_dict.ConfigDict()
  c.logging.console_every = 10
  # Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works): one W&B run per
  # workdir, resumed by the run id kept in <workdir>/metrics/wandb_run_id.
  c.logging.wandb = config_dict.ConfigDict()
  c.logging.wandb.enabled = False
  c.logging.wandb.project = "rag_r1_jax"
  c.logging.wandb.run_name = ""  # empty: config.name

  for section, defaults in tasks.config_sections().items():
    c[section] = defaults
  return c


# Shapes of the Qwen2.5 checkpoints the paper configs name (from their config.json). A
# checkpoint's own config.json rules when model.path holds one; these let `main.py --dry_run`
# size a run without it.
QWEN2_5_SHAPES = {
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
               num_heads=16, num_kv_heads=2, tie_word_embeddings=True),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
               num_heads=28, num_kv_heads=4, tie_word_embeddings=False),
}


def use_qwen2_5(c: config_dict.ConfigDict, size: str, path: str) -> None:
  """A Qwen2.5 checkpoint of `size` at `path`, trained as the papers do: bfloat16 compute over
  float32 parameters, scanned layers, full rematerialisation; its HF tokenizer."""
  c.model.source = "hf"
  c.model.path = path
  c.model.architecture = "qwen2"
  c.model.update(QWEN2_5_SHAPES[size])
  c.model.head_dim = 128
  c.model.max_position_embeddings = 32768
  c.model.rope_theta = 1000000.0
  c.model.rms_norm_eps = 1e-6
  c.model.qkv_bias = True
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.scan_layers = True
  c.model.remat = "full"
  c.tokenizer.kind = "hf"
