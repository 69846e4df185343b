"""Start-up validation of a run's ConfigDict: every problem names its field."""

from typing import Any, Callable

from rag_r1_jax import tasks
from rag_r1_jax.data import prompts
from rag_r1_jax.models import config as model_config
from rag_r1_jax.models import lora
from rag_r1_jax.retrieval import factory as retrieval_factory
from rag_r1_jax.retrieval import fusion, index as retrieval_index
from rag_r1_jax.rl import advantages, kl_control, losses, rewards
from rag_r1_jax.rollout import engine as rollout_engine
from rag_r1_jax.training import optimizer, wandb_run
from rag_r1_jax.training.rl import step as rl_step

STAGES = ("sft", "rl", "eval")

_CHOICES = {
    "model.source": ("scratch", "hf", "gguf"),
    "model.architecture": tuple(sorted(set(model_config.SUPPORTED_ARCHITECTURES.values()))),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "tokenizer.kind": ("hf", "task"),
    "export.dtype": ("auto", *model_config.DTYPES),
    "retrieval.backend": retrieval_factory.BACKENDS,
    "retrieval.index_type": retrieval_index.INDEX_TYPES,
    "retrieval.fusion": fusion.FUSION_METHODS,
    "rollout.mode": ("mq", "sq"),
    "rollout.schedule": rollout_engine.SCHEDULES,
    "rl.algorithm": tuple(rl_step.ALGORITHMS),
    "rl.kl_estimator": tuple(losses.KL_ESTIMATORS),
    "rl.kl_reward_estimator": tuple(losses.KL_ESTIMATORS),
    "rl.kl_ctrl": kl_control.KL_CONTROLLERS,
    "rl.policy_loss": tuple(losses.POLICY_LOSSES),
    "rl.advantage": advantages.ADVANTAGE_MODES,
    "rl.loss_agg": tuple(losses.AGGREGATIONS),
    "rl.microbatch_weighting": losses.MICROBATCH_WEIGHTINGS,
    "rl.rollout_is": ("", *losses.ROLLOUT_IS_LEVELS),
    "rl.reward": tuple(rewards.METRICS),
    "rl.schedule": optimizer.SCHEDULES,
    "sft.schedule": optimizer.SCHEDULES,
    "data.prompt": ("", *prompts.TEMPLATES),
}
_POSITIVE = (
    "model.hidden_size", "model.intermediate_size", "model.num_layers", "model.num_heads",
    "model.num_kv_heads", "model.head_dim", "model.max_position_embeddings",
    "retrieval.topk", "rollout.max_turns", "rollout.max_queries_per_call",
    "rollout.max_query_chars", "rollout.max_turn_tokens", "rollout.max_obs_length",
    "rollout.max_total_length", "rollout.decode_chunk_steps", "sft.batch_size", "sft.max_length",
    "rl.batch_size", "rl.mini_batch_size", "rl.group_size", "rl.epochs_per_batch",
    "rl.microbatches", "checkpoint.keep", "checkpoint.every_steps", "eval.batch_size",
    "rl.kl_target", "rl.kl_horizon", "rl.rollout_is_threshold", "rl.max_nonfinite_steps",
    "sft.max_nonfinite_steps", "logging.console_every",
)
_NON_NEGATIVE = ("sft.epochs", "rl.steps", "rl.kl_coef", "rl.entropy_coef", "sft.learning_rate",
                 "rl.learning_rate", "rl.critic_learning_rate", "eval.max_questions",
                 "sampling.top_k", "rl.format_reward", "rollout.mq_json_indent",
                 "rollout.cache_block_size", "sft.pack_length", "sft.max_examples",
                 "rl.length_bucket", "model.attention_block", "rl.micro_batch_size_per_device",
                 "sft.micro_batch_size_per_device", "rollout.rows_in_flight",
                 "rl.critic_epochs", "rl.critic_mini_batch_size", "rl.eval_every",
                 "rl.eval_questions")
_FRACTIONS = ("sft.validation_fraction", "sft.warmup_ratio", "rl.warmup_ratio", "rl.clip_eps_low",
              "rl.gamma", "rl.gae_lambda", "rl.min_lr_ratio")


class ConfigError(ValueError):
  """A config with one or more bad fields."""


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config.{dotted}: missing field (declared in configs/common.py)")
    node = node[part]
  return node


def validate(config) -> None:
  """Raises ConfigError listing every bad or inconsistent field."""
  problems: list[str] = []

  def check(field: str, ok: Callable[[Any], bool], message: str) -> None:
    value = _get(config, field)
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      problems.append(f"config.{field}={value!r}: {message}")

  for field, choices in {**_CHOICES, "data.source": tuple(tasks.TASKS)}.items():
    check(field, lambda v, c=choices: v in c, f"must be one of {', '.join(choices)}")
  for field in _POSITIVE:
    check(field, lambda v: v > 0, "must be positive")
  for field in _NON_NEGATIVE:
    check(field, lambda v: v >= 0, "must be >= 0")
  for field in _FRACTIONS:
    check(field, lambda v: 0 <= v <= 1, "must be in [0, 1]")
  check("rl.clip_eps_high", lambda v: v >= 0, "must be >= 0")
  check("rl.clip_ratio_c", lambda v: v == 0 or v > 1, "must be 0 (off) or above 1 (dual clip)")
  for field in ("rl.adam_b1", "rl.adam_b2"):
    check(field, lambda v: 0 <= v < 1, "must be in [0, 1)")
  for field in ("rl.warmup_steps", "rl.critic_warmup_steps"):
    check(field, lambda v: v == int(v) and v >= -1, "must be -1 (from the ratio) or >= 0")
  check("rl.critic_warmup_ratio", lambda v: v < 0 or v < 1,
        "must be negative (rl.warmup_ratio) or in [0, 1)")
  algorithm = rl_step.ALGORITHMS.get(config.rl.algorithm)  # None: reported as a bad choice
  check("rl.kl_ctrl", lambda v: v == "fixed" or (algorithm is not None and not algorithm.kl_in_loss
                                                  and config.rl.kl_coef > 0),
        "'adaptive' steers the reward's KL penalty: it needs config.rl.algorithm='ppo' and "
        "config.rl.kl_coef > 0")
  micro_rows = _actor_microbatch_rows(config)
  critic_rows = lambda v: v * config.rl.group_size  # noqa: E731
  check("rl.critic_mini_batch_size",
        lambda v: v == 0 or (config.rl.batch_size % v == 0 and (
            optimizer.critic_rows_fit(critic_rows(v), micro_rows))),
        f"must be 0 (rl.mini_batch_size) or divide config.rl.batch_size={config.rl.batch_size} "
        f"in critic minibatches whose rows (x config.rl.group_size) fit in, or are a multiple "
        f"of, the actor's {micro_rows}-row microbatches")
  check("model.logprob_chunk", lambda v: v >= -1, "must be -1 (automatic), 0 or a chunk size")
  check("rollout.rows_in_flight", lambda v: v % config.rl.group_size == 0,
        f"must be a multiple of config.rl.group_size={config.rl.group_size} (a group shares "
        "one prefill)")
  check("sampling.temperature", lambda v: v > 0, "must be positive (use sampling.greedy)")
  check("sampling.top_p", lambda v: 0 < v <= 1, "must be in (0, 1]")
  check("stages", lambda v: v and all(s in STAGES for s in _split(v)),
        f"must be a comma-separated subset of {','.join(STAGES)}")
  check("model.num_heads", lambda v: v % config.model.num_kv_heads == 0,
        f"must be a multiple of config.model.num_kv_heads={config.model.num_kv_heads}")
  check("model.head_dim", lambda v: v % 2 == 0, "must be even (rotary embeddings)")
  check("model.lora_rank", lambda v: v == int(v) and v >= 0, "must be 0 (off) or a rank > 0")
  check("model.lora_alpha", lambda v: v > 0, "must be positive (adapters scale by alpha / rank)")
  check("model.lora_targets",
        lambda v: lora.parse_targets(v) and set(lora.parse_targets(v)) <= set(lora.TARGETS),
        f"must be a comma-separated subset of {','.join(lora.TARGETS)}")
  if config.model.source in ("hf", "gguf"):
    check("model.path", bool, f"is required when config.model.source={config.model.source!r}")
  if config.retrieval.backend == "server":
    check("retrieval.server_url", lambda v: str(v).startswith(("http://", "https://")),
          "must be an http(s) URL when config.retrieval.backend='server'")
  for field in ("retrieval.encode_batch_size", "retrieval.encode_seq_bucket",
                "retrieval.fusion_depth"):
    check(field, lambda v: v > 0, "must be positive")
  for field in ("retrieval.fusion_dense_weight", "retrieval.fusion_bm25_weight",
                "retrieval.rrf_k"):
    check(field, lambda v: v >= 0, "must be >= 0")
  if config.retrieval.backend == "hybrid":
    check("retrieval.fusion_bm25_weight",
          lambda v: v + config.retrieval.fusion_dense_weight > 0,
          "and config.retrieval.fusion_dense_weight must not both be 0 for the hybrid backend")
  check("rl.batch_size", lambda v: v % config.rl.mini_batch_size == 0,
        f"must be a multiple of config.rl.mini_batch_size={config.rl.mini_batch_size}")
  check("rl.microbatches", lambda v: (config.rl.mini_batch_size * config.rl.group_size) % v == 0,
        "must divide the minibatch rows (config.rl.mini_batch_size x config.rl.group_size)")
  check("sft.microbatches", lambda v: v > 0 and config.sft.batch_size % v == 0,
        f"must divide config.sft.batch_size={config.sft.batch_size}")
  check("sft.pack_length", lambda v: v == 0 or v >= config.sft.max_length,
        f"must be 0 (no packing) or at least config.sft.max_length={config.sft.max_length}, "
        "so that every kept example fits in a row")
  group_baseline = algorithm is not None and not algorithm.critic
  if group_baseline:
    check("rl.group_size", lambda v: v >= 2,
          "GRPO needs at least 2 samples per question (the group is the baseline)")
  check("rl.oversample", lambda v: v >= 1.0, "must be >= 1 (prompts rolled out per trained one)")
  if algorithm is not None and not group_baseline:
    check("rl.oversample", lambda v: v == 1.0,
          "chooses groups by their reward spread, which only GRPO's advantages need; "
          "keep 1.0 with PPO")
  _task_problems(config, check, problems)
  check("rollout.max_total_length",
        lambda v: v <= config.model.max_position_embeddings or config.model.source != "scratch",
        f"must be <= config.model.max_position_embeddings={config.model.max_position_embeddings}")
  if config.logging.wandb.enabled:
    check("logging.wandb.project", bool, "is required when config.logging.wandb.enabled")
    check("logging.wandb.enabled", lambda v: wandb_run.available(),
          "needs the wandb package (`pip install wandb`), or set it to False")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _task_problems(config, check, problems: list[str]) -> None:
  """The run's task checks its own config section; another task's section must be left at
  its defaults (it would be ignored)."""
  if config.data.source not in tasks.TASKS:
    return  # reported as a bad choice
  for name in tasks.TASKS:
    cls = tasks.task_class(name)
    if name == config.data.source:
      cls.validate(config, check)
    elif cls.section and cls.section in config:
      ours, defaults = config[cls.section].to_dict(), cls.defaults().to_dict()
      changed = sorted(k for k in ours.keys() | defaults.keys() if ours.get(k) != defaults.get(k))
      if not changed:
        continue
      problems.append(f"config.{cls.section}.{{{', '.join(changed)}}} set, but only "
                      f"data.source={name!r} reads config.{cls.section} (data.source is "
                      f"{config.data.source!r})")


def _actor_microbatch_rows(config) -> int:
  """Rows of one actor microbatch as far as known before the mesh (rl.microbatches' split;
  with rl.micro_batch_size_per_device the update checks it, RLHparams.from_config)."""
  rl = config.rl
  if rl.micro_batch_size_per_device:
    return 1  # every critic minibatch is a multiple here; RLHparams.from_config checks it
  return max(rl.mini_batch_size * rl.group_size // max(rl.microbatches, 1), 1)


def validate_mesh(config, mesh_shape) -> None:
  """Raises ConfigError for each batch the mesh's data x fsdp axes do not split evenly.

  mesh_shape: {"data": n, "fsdp": n, "tensor": n} (a Mesh's `.shape`). An axis that does not
  divide an array is otherwise dropped for it (rag_r1_jax/sharding.py), which would replicate
  a batch on every device instead of failing.
  """
  shards = int(mesh_shape["data"]) * int(mesh_shape["fsdp"])
  where = f"the mesh's data x fsdp = {shards} devices"
  problems = []
  rl, sft = config.rl, config.sft
  minibatch = rl.mini_batch_size * rl.group_size
  batches = {"sft.batch_size": sft.batch_size,
             "rl.mini_batch_size": minibatch,
             "rollout.rows_in_flight": config.rollout.rows_in_flight,
             "eval.batch_size": config.eval.batch_size if not config.rollout.rows_in_flight else 0}
  for field, rows in batches.items():
    if rows and rows % shards:
      what = " x config.rl.group_size" if field == "rl.mini_batch_size" else ""
      problems.append(f"config.{field}{what} = {rows} rows: not divisible by {where}")
  for field, rows in (("sft", sft.batch_size), ("rl", minibatch)):
    per_device = config[field].micro_batch_size_per_device
    if per_device and rows % (per_device * shards):
      problems.append(
          f"config.{field}.micro_batch_size_per_device={per_device}: {per_device} x {shards} "
          f"(data x fsdp) rows do not divide the {rows} rows of an update")
    if not per_device and (rows // max(config[field].microbatches, 1)) % shards:
      problems.append(
          f"config.{field}.microbatches={config[field].microbatches}: microbatches of "
          f"{rows // max(config[field].microbatches, 1)} rows are not divisible by {where}")
  if problems:
    raise ConfigError("config does not fit the mesh:\n  " + "\n  ".join(problems))


def validate_model_mesh(cfg, mesh_shape) -> None:
  """Raises ConfigError when the mesh's tensor axis does not divide the model's heads or MLP.

  cfg: the DecoderConfig (known once the checkpoint's config is read).
  """
  tensor = int(mesh_shape["tensor"])
  problems = [f"model {name}={getattr(cfg, name)} is not divisible by config.mesh.tensor={tensor}"
              for name in ("num_heads", "num_kv_heads", "intermediate_size")
              if getattr(cfg, name) % tensor]
  if problems:
    raise ConfigError("model does not fit the mesh:\n  " + "\n  ".join(problems))


def stages(config) -> list[str]:
  return _split(config.stages)


def _split(value: str) -> list[str]:
  return [s.strip() for s in str(value).split(",") if s.strip()]
