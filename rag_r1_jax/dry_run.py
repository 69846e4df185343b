"""Dry run: a config's SFT step, RL scoring and update, and rollout decode, compiled for its mesh
with abstract weights, and their per-device memory against the device's.

Nothing is allocated: every array is a `jax.ShapeDtypeStruct` carrying the sharding the run
gives it, and each jitted step is lowered and compiled ahead of time; the executable's
`memory_analysis()` gives per-device bytes. It runs on real devices or on simulated ones
(`XLA_FLAGS=--xla_force_host_platform_device_count=N` before jax is imported). XLA:CPU computes
bfloat16 dots in float32, so figures compiled for CPU overstate GPU / TPU temporaries.

Each part's peak per device is arguments + outputs - aliased (donated) + temporaries +
resident, where resident is what the run holds beside that step and outside its arguments:
the summed gradients next to a length-cut microbatch's, the RL train state during rollouts.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rag_r1_jax import assets, sharding
from rag_r1_jax.models import config as config_lib
from rag_r1_jax.models import lora
from rag_r1_jax.models import params as params_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.training.rl import step as rl_step

GIB = float(1 << 30)
SFT_FIELDS = ("tokens", "positions", "attention_mask", "loss_mask")
_INT_FIELDS = ("tokens", "positions", "attention_mask")


@dataclasses.dataclass
class Part:
  """One compiled step and its per-device memory (bytes)."""
  name: str
  shape: str  # what it was compiled for, in words
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  resident: int
  compile_seconds: float

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    if not isinstance(x, jax.ShapeDtypeStruct):
      continue  # static arguments
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    itemsize = 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.dtype.itemsize
    total += int(np.prod(shape)) * itemsize
  return total


def model_config(config) -> tuple[config_lib.DecoderConfig, str]:
  """The policy's DecoderConfig and where it came from: the checkpoint's config.json when
  `config.model.path` holds one (a GGUF file's header), else the shape fields of `config.model`."""
  import os
  model = config.model
  runtime = dict(dtype=model.dtype, param_dtype=model.param_dtype, scan_layers=model.scan_layers,
                 remat=model.remat, **config_lib.lora_fields(model))
  path = assets.resolve(model.path) if model.path else ""
  if model.source == "hf" and os.path.isfile(os.path.join(path, "config.json")):
    return config_lib.load_hf_config(path, **runtime), f"{path}/config.json"
  if model.source == "gguf":
    from rag_r1_jax.models import gguf_import
    return (config_lib.from_hf_dict(gguf_import.hf_config(path), **runtime),
            f"the header of {path}")
  if not model.vocab_size:
    raise ValueError("config.model.vocab_size=0 (taken from the tokenizer at run time): give the "
                     "dry run a vocabulary size with --config.model.vocab_size=N")
  cfg = config_lib.from_model_config(model)
  return cfg, "the shape fields of config.model"


def _abstract(tree, shardings):
  """`tree`'s leaves as ShapeDtypeStructs with the shardings of `shardings` (same leaf order;
  it may hold NamedShardings where `tree` holds nnx Variables)."""
  leaves, treedef = jax.tree.flatten(tree)
  specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  assert len(leaves) == len(specs), (len(leaves), len(specs))
  return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                            for x, s in zip(leaves, specs)])


def abstract_params(cfg, mesh: Mesh, rules=sharding.DEFAULT_RULES):
  """(graphdef, params as sharded ShapeDtypeStructs) of a Decoder; nothing allocated."""
  model = params_lib.abstract_model(cfg)
  graphdef, state = nnx.split(model)
  return graphdef, _abstract(state, params_lib.state_shardings(model, mesh, rules))


def _abstract_opt_state(tx, params):
  """tx.init(params) as ShapeDtypeStructs, sharded as train_state.init_opt_state shards it."""
  return _abstract(*train_state.opt_state_shardings(tx, params))


def abstract_train_state(cfg, mesh: Mesh, tx, *, reference: bool, critic_tx=None):
  """A TrainState of ShapeDtypeStructs: policy, optimizer state, scalars, optional reference
  and critic, each sharded as `train_state.create_state` places them.

  With LoRA (cfg.lora_rank > 0) as create_state builds it too: the adapters are the trained
  params with the optimizer state, every other weight is `frozen`, and the reference is that
  frozen base (no second copy of the weights).
  """
  graphdef, params = abstract_params(cfg, mesh)
  frozen = None
  if cfg.lora_rank > 0:
    params, frozen = nnx.split_state(params, lora.LoraParam, ...)
  replicated = NamedSharding(mesh, PartitionSpec())
  scalar = lambda like: jax.ShapeDtypeStruct(like.shape, like.dtype, sharding=replicated)  # noqa: E731
  critic = None
  if critic_tx is not None:
    c_model = nnx.eval_shape(lambda: train_state.Critic(cfg, rngs=nnx.Rngs(0)))
    c_graphdef, c_state = nnx.split(c_model)
    c_params = _abstract(c_state, params_lib.state_shardings(c_model, mesh))
    critic = train_state.CriticState(graphdef=c_graphdef, tx=critic_tx, params=c_params,
                                     opt_state=_abstract_opt_state(critic_tx, c_params))
  return train_state.TrainState(
      graphdef=graphdef, tx=tx, params=params, opt_state=_abstract_opt_state(tx, params),
      step=scalar(jax.ShapeDtypeStruct((), jnp.int32)),
      rng=scalar(jax.eval_shape(lambda: jax.random.key(0))),
      ref_params=params if reference and frozen is None else None, critic=critic,
      frozen=frozen, base_graphdef=params_lib.base_graphdef(cfg) if frozen is not None else None,
      ref_is_base=reference and frozen is not None)


def abstract_rows(mesh: Mesh, rows: int, width: int, fields) -> dict:
  """A batch of `fields` [rows, width], split over the batch axes, as ShapeDtypeStructs."""
  spec = sharding.named_sharding(mesh, ("batch", None), (rows, width))
  dtype = lambda k: jnp.int32 if k in _INT_FIELDS else jnp.float32  # noqa: E731
  return {k: jax.ShapeDtypeStruct((rows, width), dtype(k), sharding=spec) for k in fields}


def _compile(name: str, shape: str, fn, *args, resident: int = 0, **kwargs) -> Part:
  """Compiles jitted fn(*args, **kwargs) (`_part`)."""
  return _part(name, shape, lambda: fn.lower(*args, **kwargs), args, resident)


def _part(name: str, shape: str, lower, args, resident: int = 0) -> Part:
  """Compiles what lower() lowers. Arrays among `args` that the step does not read (XLA drops
  them from its arguments: a reference the update does not use) are still held by the run, so
  they count as resident, with `resident` itself."""
  start = time.perf_counter()
  compiled = lower().compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  held = per_device_bytes(args)
  unread = max(0, held - m.argument_size_in_bytes)
  return Part(name, shape, m.argument_size_in_bytes, m.output_size_in_bytes,
              m.alias_size_in_bytes, m.temp_size_in_bytes, resident + unread, seconds)


def sft_part(config, cfg, mesh: Mesh) -> Part:
  """The SFT update on one batch of sft.batch_size rows at the longest width it runs."""
  sft = config.sft
  hp = sft_step.SFTHparams.from_config(config, 1000, sharding.batch_shards(mesh))
  width = sft.pack_length or -(-sft.max_length // sft.length_bucket) * sft.length_bucket
  tx = opt_lib.make_optimizer(sft.learning_rate, 1000, sft.warmup_ratio, sft.schedule,
                              sft.max_grad_norm, sft.weight_decay)
  state = abstract_train_state(cfg, mesh, tx, reference=False)
  batch = abstract_rows(mesh, sft.batch_size, width, SFT_FIELDS)
  shape = f"{sft.batch_size} rows x {width} tokens, {hp.microbatches} microbatch(es)"
  with jax.set_mesh(mesh):
    return _compile("sft step", shape, sft_step.sft_update, state, batch, hp)


def rl_state(config, cfg, mesh: Mesh):
  rl = config.rl
  critic = rl_step.ALGORITHMS[rl.algorithm].critic
  critic_tx = train_state.rl_optimizer(rl, critic=True) if critic else None
  return abstract_train_state(cfg, mesh, train_state.rl_optimizer(rl),
                              reference=rl.kl_coef > 0, critic_tx=critic_tx)


def rollout_resident(config, cfg, mesh: Mesh) -> int:
  """Per-device bytes of the RL state the device holds while the sampler runs: all of it, or
  the policy's parameters alone (with LoRA's frozen base) with rl.offload_during_rollout."""
  state = rl_state(config, cfg, mesh)
  kept = (state.params, state.frozen) if config.rl.offload_during_rollout else state
  return per_device_bytes(kept)


def rl_parts(config, cfg, mesh: Mesh) -> list[Part]:
  """The RL scoring pass (when it runs) and one update, at rollout.max_total_length tokens."""
  hp = rl_step.RLHparams.from_config(config, sharding.batch_shards(mesh))
  state = rl_state(config, cfg, mesh)
  width = config.rollout.max_total_length
  rows = hp.mini_batch_rows
  micro_rows = rows // hp.microbatches
  parts = []
  on_policy = rl_trainer.single_on_policy_update(hp, config.rl.batch_size * config.rl.group_size)
  if not on_policy or state.has_reference or state.critic is not None:
    mb = abstract_rows(mesh, micro_rows, width, SFT_FIELDS)
    with jax.set_mesh(mesh):
      parts.append(_compile("rl scoring", f"{micro_rows} rows x {width} tokens",
                            rl_step.score, state, mb, hp, old=not on_policy))
  fields = ["tokens", "positions", "attention_mask", "loss_mask", "advantages",
            *rl_trainer.minibatch_logprob_fields(hp, on_policy)]
  fields += hp.algo.value_fields
  with jax.set_mesh(mesh):
    if hp.length_bucket:
      # rl_trainer._trimmed_update: each length-cut microbatch's gradients beside their sum.
      micro_hp = dataclasses.replace(hp, microbatches=1)
      if hp.loss_agg == "seq_sum_norm" and hp.norm_length is None:
        micro_hp = dataclasses.replace(micro_hp, norm_length=width)
      mb = abstract_rows(mesh, micro_rows, width, fields)
      grads = jax.eval_shape(rl_step.weighted_gradients, state, mb, micro_hp, jnp.float32(1))
      shardings = {"actor": jax.tree.map(lambda x: x.sharding, state.params)}
      summed = per_device_bytes(_abstract(grads["actor"][2], shardings["actor"]))
      parts.append(_compile(
          "rl update", f"{micro_rows} rows x {width} tokens, one of {hp.microbatches} "
          "length-cut microbatches, beside the summed gradients", rl_step.weighted_gradients,
          state, mb, micro_hp, jax.ShapeDtypeStruct((), jnp.float32), resident=summed))
      grads = jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) else x, grads)
      summed_grads = {"actor": (grads["actor"][0], grads["actor"][1],
                                _abstract(grads["actor"][2], shardings["actor"]))}
      summed_grads = jax.tree.map(
          lambda x: x if getattr(x, "sharding", None) is not None else jax.ShapeDtypeStruct(
              x.shape, x.dtype, sharding=NamedSharding(mesh, PartitionSpec())), summed_grads)
      parts.append(_compile("rl optimizer step", "the summed gradients applied (AdamW)",
                            rl_step.apply_gradients, state, summed_grads, hp))
    else:
      mb = abstract_rows(mesh, rows, width, fields)
      parts.append(_compile("rl update", f"{rows} rows x {width} tokens, {hp.microbatches} "
                            "microbatch(es)", rl_step.minibatch_update, state, mb, hp))
  return parts


class _BlankTokenizer:
  """Token texts for the sampler's stop-string tables when no tokenizer is at hand: the tables'
  shapes, hence the decode's memory, depend only on the vocabulary size."""

  def decode(self, ids, **kwargs):
    del ids, kwargs
    return ""


def rollout_part(config, cfg, mesh: Mesh, resident: int) -> Part:
  """One decode call of rollout.rows_in_flight rows (all of a step's, if 0) at full capacity,
  with the weights in the sampler's decode layout (LoRA: the merged model, adapters folded in);
  `resident`: the RL state kept beside it."""
  cfg = cfg.without_adapters()
  rows = config.rollout.rows_in_flight or (
      int(config.rl.batch_size * config.rl.oversample) * config.rl.group_size)
  capacity = config.rollout.max_total_length
  graphdef, params = abstract_params(cfg, mesh)
  model = nnx.merge(graphdef, params)
  # Built without a mesh (its weights are abstract, nothing to convert), then given the mesh
  # for its state's shardings and the decode's trace.
  sampler = sampler_lib.Sampler(model, _BlankTokenizer(), capacity=capacity,
                                block_size=config.rollout.cache_block_size or None)
  state = jax.eval_shape(lambda: sampler.init(rows, jax.random.key(0)))
  sampler.mesh = mesh
  state = _abstract(state, sampler.state_shardings(rows))
  decode_params = _abstract(
      jax.eval_shape(lambda p: sampler_lib.decode_dtypes(p, cfg.compute_dtype), params),
      params_lib.state_shardings(model, mesh, sharding.DECODE_RULES))
  settings = sampler_lib.DecodeSettings(SamplingParams.from_config(config.sampling),
                                        config.rollout.max_turn_tokens)
  shape = (f"{rows} rows x {capacity} cache positions ({sampler.block_size}-position blocks)"
           + (", beside the RL train state" if resident else ""))
  with jax.set_mesh(mesh), sharding.activation_rules(sharding.DECODE_RULES):
    return _part("rollout decode", shape,
                 lambda: sampler.lower_decode(decode_params, state, settings),
                 (decode_params, state, settings), resident=resident)


def run(config, mesh: Mesh, stages=("sft", "rl"), log=print) -> list[Part]:
  """Compiles every part the configured stages run (rollouts for rl and eval); returns them."""
  cfg, _ = model_config(config)
  parts = []

  def add(part: Part) -> None:
    log(f"dry run: {part.name} compiled in {part.compile_seconds:.0f} s, peak "
        f"{part.peak / GIB:.2f} GiB per device")
    parts.append(part)

  if "sft" in stages:
    add(sft_part(config, cfg, mesh))
  if "rl" in stages:
    for part in rl_parts(config, cfg, mesh):
      add(part)
  if "rl" in stages or "eval" in stages:
    resident = rollout_resident(config, cfg, mesh) if "rl" in stages else 0
    add(rollout_part(config, cfg, mesh, resident))
  return parts


def table(parts: list[Part], device_memory_gb: float | None) -> str:
  """A markdown table of the parts' per-device GiB and, given the device's, each verdict."""
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = ["| part | compiled for | arguments | outputs | aliased | temporaries | resident | "
           "peak | verdict |", "|---|---|---|---|---|---|---|---|---|"]
  for p in parts:
    lines.append(f"| {p.name} | {p.shape} | {gib(p.arguments)} | {gib(p.outputs)} | "
                 f"{gib(p.aliased)} | {gib(p.temporaries)} | {gib(p.resident)} | "
                 f"{gib(p.peak)} | {verdict(p, device_memory_gb)} |")
  return "\n".join(lines)


def verdict(part: Part, device_memory_gb: float | None) -> str:
  if device_memory_gb is None:
    return "-"
  over = part.peak - device_memory_gb * GIB
  if over <= 0:
    return f"fits ({-over / GIB:.2f} GiB free)"
  return f"DOES NOT FIT: {over / GIB:.2f} GiB over {device_memory_gb:g} GiB"


def device_memory_gib() -> float | None:
  """The first device's memory limit in GiB, if it reports one (GPU, TPU; not CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return limit / GIB if limit else None


def main(config, mesh: Mesh, device_memory_gb: float | None) -> int:
  """`main.py --dry_run`: prints the table; 0 if every part fits (or no limit is known), 1 if not."""
  from rag_r1_jax import config_validation
  cfg, source = model_config(config)
  config_validation.validate_model_mesh(cfg, mesh.shape)
  if device_memory_gb is None:
    device_memory_gb = device_memory_gib()
  print(f"dry run: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size} "
        f"(from {source}); {sharding.describe(mesh)}; compiling...", flush=True)
  parts = run(config, mesh, config_validation.stages(config),
              log=lambda line: print(line, flush=True))
  print(table(parts, device_memory_gb), flush=True)
  if jax.devices()[0].platform == "cpu":
    print("dry run: compiled for CPU, where XLA computes bfloat16 dots in float32: GPU / TPU "
          "temporaries are smaller", flush=True)
  if device_memory_gb is None:
    print("dry run: no device memory figure (pass --device_memory_gb=N for a verdict)")
    return 0
  over = [p for p in parts if p.peak > device_memory_gb * GIB]
  for p in over:
    print(f"dry run: {p.name} does not fit: it needs {p.peak / GIB:.2f} GiB per device, "
          f"{(p.peak - device_memory_gb * GIB) / GIB:.2f} GiB more than {device_memory_gb:g}")
  if not over:
    print(f"dry run: every part fits in {device_memory_gb:g} GiB per device")
  return 1 if over else 0
