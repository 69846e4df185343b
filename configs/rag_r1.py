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

  config.tokenizer.kind = "task"  # a BPE tokenizer trained on the world's texts

  mode = "sq" if variant == "sq" else "mq"
  config.data.source = "synthetic_world"
  config.world.entities = 240
  config.data.prompt = f"short_{mode}"  # the paper's instructions, compressed for a tiny model

  # The world's passages in an in-process FAISS index over MiniLM embeddings.
  config.retrieval.backend = "faiss"
  config.retrieval.index_type = "flat"
  config.retrieval.encoder_path = "asset:minilm_dir"
  config.retrieval.topk = 1  # halves sequence length; the teacher still solves ~94% of questions

  config.rollout.mode = mode
  config.rollout.max_turns = 4
  config.rollout.max_turn_tokens = 64
  config.rollout.max_obs_length = 160
  config.rollout.max_total_length = 512
  # The mq observation's JSON on one line: the same object as RAG-R1's indented one, ~20 fewer
  # tokens per search for a model whose whole trajectory is ~200 tokens.
  config.rollout.mq_json_indent = 0

  # SFT over the teacher's trajectories on the world's train split plus 12 fresh draws of it
  # (new names and facts) and list-copying drills: a from-scratch model must learn to copy
  # names and values, which it only does when memorising cannot lower the loss. Examples are
  # packed into 8 rows of 256 tokens (~13 examples a step; with 8 draws padded batches were
  # 47% real tokens, packed 84%: 1.69x the examples per second, bench_sft_packing.py).
  # Six more draws add only their questions answered by reading numbers (years, heights,
  # populations; 792 of a draw's 1404). Without them height tokens never learnt to be copied
  # (embeddings at a mean cosine of .83, "How tall" EM .07: every answer "156 cm") and test
  # comparison thoughts held the right numbers on 36 of 88 questions; with them 72 of 88,
  # single-hop EM .734 -> .932, all questions .456 -> .539, for 26% more SFT steps (docs/experiment_log.md).
  config.world.sft_draws = 12
  config.world.number_draws = 6
  config.world.copy_drills = 8000
  config.sft.epochs = 1
  config.sft.batch_size = 8
  config.sft.pack_length = 256
  config.sft.learning_rate = 3e-3
  config.sft.max_length = 256  # the longest teacher example is 225 tokens (sq) / 224 (mq)
  config.sft.cut_subsamples = False  # same targets as the paper's cut, a third of the compute

  # GRPO: 32 steps of 32 questions x 8 samples, one update per step in 8 microbatches of 32
  # rows (bounded activation memory; timings: README's bench_rl_microbatches.py row). From one
  # SFT policy (docs/experiment_log.md): 16 questions per step at lr 6e-4 left test EM flat, and
  # lr 2e-3 (or 1e-3 with a KL penalty) drifted the policy (entropy and KL up, reward down).
  # Training on mixed-reward groups first (rl.oversample=1.5) moved test EM by +0.3 at this lr
  # and -3.8 at 1e-3, at 1.7x the rollout time (docs/experiment_log.md), so it is off here.
  config.rl.steps = 32
  config.rl.batch_size = 32
  config.rl.mini_batch_size = 32
  config.rl.group_size = 8
  config.rl.microbatches = 8
  # Microbatches of rows sorted by length, each cut to its own longest row (a multiple of 64):
  # a batch is as wide as its longest rambling row (384 of 512 columns often), most rows are
  # ~175 tokens, so the cut microbatches skip most padding (README: bench_rl_microbatches.py).
  config.rl.length_bucket = 64
  config.rl.learning_rate = 5e-4
  config.rl.warmup_ratio = 0.25  # a fresh Adam's first steps are sign-like: ramp up over 8 steps
  config.rl.kl_coef = 0.0  # no reference forward pass: a quarter of each update
  config.rl.entropy_coef = 0.0
  # Each step rolls out a fresh draw of the world (searched over its own index, ~1.6 s to build):
  # on one draw, GRPO taught the policy that draw's commonest answers, which it then wrote at
  # test time whatever it had read (bridge EM .844 -> .583). Rollouts at temperature 1.3 (and
  # the common top_p 0.95) make about half the groups mixed instead of a third. From the same
  # SFT policies, test EM after RL: seed 0 .452 -> .468, seed 1 .427 -> .462 (docs/experiment_log.md).
  config.world.rl_draw_count = 32
  config.sampling.temperature = 1.3  # RL rollouts only: evaluation decodes greedily
  config.checkpoint.every_steps = 10

  config.eval.batch_size = 32
  config.eval.max_questions = 0  # every test question (466): +-2 points of noise, not +-3

  if variant == "smoke":
    config.model.hidden_size = 64
    config.model.intermediate_size = 128
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.model.num_kv_heads = 1
    config.world.entities = 60
    config.world.sft_draws = 1
    config.world.number_draws = 1
    config.world.copy_drills = 64
    config.rl.steps = 2
    config.rl.batch_size = 4
    config.rl.mini_batch_size = 4
    config.rl.microbatches = 4
    config.rl.kl_coef = 0.001  # CI exercises the reference-model path too
    config.rl.oversample = 1.5  # and the mixed-groups-first selection (6 rolled out, 4 trained)
    config.world.rl_draw_count = 2  # CI resumes across RL draws (step 2 uses the second)
    config.checkpoint.every_steps = 1
    config.eval.max_questions = 8
    config.eval.batch_size = 8
  # RL on a fresh draw of the train split that SFT never saw (rewards come from reading the
  # retrieved passages, not from recalling SFT's entities).
  config.world.rl_draw = config.world.sft_draws + config.world.number_draws + 1
  return config
