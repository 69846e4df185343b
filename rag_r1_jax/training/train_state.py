"""TrainState: everything an update step reads and writes, as one donatable, checkpointable pytree.

The NNX graphdefs and optax transforms are static (pytree aux data); the arrays are the policy
parameters, their float32 optimizer state, the update counter, a typed PRNG key, and
optionally the frozen reference parameters (KL to the SFT model) and a critic (PPO).
Every array lives on the mesh: parameters by their logical axes (`params.state_shardings`),
optimizer moments like their parameters, scalars replicated. `shardings(state)` reads them
back for checkpoint restore targets.

The reference and critic start as COPIES of the policy's arrays (own buffers), so donating
the state to an update never deletes a buffer that another field still uses; the policy
itself takes over the given model's arrays (no third copy of a large model).

With LoRA (model.lora_rank > 0) `params` holds the adapters alone: the gradients and the
optimizer state are theirs only. Every other weight is in `frozen`, closed over by the losses
(`bind_frozen`), never updated and never checkpointed (`saved`: a resumed run rebuilds it from
the model path). The KL reference is then the base model itself, `frozen` without the
adapters (no copy of the weights), and the sampler gets the merged model (`merged_model`).
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rag_r1_jax import multihost, timing
from rag_r1_jax.models import lora
from rag_r1_jax.models import params as params_lib
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.models.decoder import Decoder
from rag_r1_jax.training import logprobs as logprobs_lib
from rag_r1_jax.training import optimizer as opt_lib

PyTree = Any


class Critic(nnx.Module):
  """PPO's critic: its own Decoder plus a value head Linear(hidden -> 1)."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.decoder = Decoder(cfg, rngs=rngs)
    kernel = jax.random.normal(rngs.params(), (cfg.hidden_size, 1), jnp.float32) * 0.02
    self.value_kernel = nnx.Param(kernel.astype(cfg.weight_dtype), logical_axes=("embed", None))
    self.value_bias = nnx.Param(jnp.zeros((1,), cfg.weight_dtype), logical_axes=(None,))

  def __call__(self, batch) -> jax.Array:
    """Values [batch, seq] float32: values[b, t] is the value of the state before token t."""
    _, _, hidden = self.decoder(batch["tokens"], positions=batch["positions"],
                                attention_mask=batch["attention_mask"], return_hidden=True)
    out = jnp.dot(hidden.astype(jnp.float32), self.value_kernel[...].astype(jnp.float32))
    values = out[..., 0] + self.value_bias[...].astype(jnp.float32)[0]
    return logprobs_lib.shift_values(values)


@struct.dataclass
class CriticState:
  """The critic's parameters and optimizer state (its own learning rate)."""
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  params: nnx.State
  opt_state: PyTree


@struct.dataclass
class TrainState:
  """Policy parameters + optimizer state, update count, PRNG key; optional reference and critic."""
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  params: nnx.State
  opt_state: PyTree
  step: jax.Array  # [] int32: optimizer updates applied (skipped non-finite steps excluded)
  rng: jax.Array  # [] typed PRNG key (minibatch shuffling)
  ref_params: Optional[nnx.State] = None
  critic: Optional[CriticState] = None
  # LoRA: the weights that are not adapters (see the module docstring), the graph that makes
  # them the base model, and whether that base is the KL reference.
  frozen: Optional[nnx.State] = None
  base_graphdef: Optional[nnx.GraphDef] = struct.field(pytree_node=False, default=None)
  ref_is_base: bool = struct.field(pytree_node=False, default=False)

  def full_params(self, params: Optional[nnx.State] = None) -> nnx.State:
    """`params` (default: the state's) with the frozen weights: the whole policy's state."""
    params = self.params if params is None else params
    return params if self.frozen is None else nnx.merge_state(params, self.frozen)

  def bind_frozen(self, loss_fn: Callable[[nnx.State, Any], Any]
                  ) -> Callable[[nnx.State, Any], Any]:
    """loss_fn(whole policy state, batch) as a function of the trained params alone; the
    frozen weights are closed over, so gradients are taken for the trained params only."""
    if self.frozen is None:
      return loss_fn
    return lambda params, batch: loss_fn(self.full_params(params), batch)

  def model(self) -> Decoder:
    """The policy as a Decoder (shares this state's arrays)."""
    return nnx.merge(self.graphdef, self.full_params())

  def merged_model(self) -> Decoder:
    """The policy with its adapters folded in (the sampler's and the export's model); the
    policy itself without LoRA."""
    return params_lib.merge_adapters(self.model())

  @property
  def has_reference(self) -> bool:
    return self.ref_params is not None or self.ref_is_base

  def reference(self) -> Decoder:
    """The frozen reference policy as a Decoder: its own copy, or with LoRA the base."""
    if self.ref_is_base:
      return nnx.merge(self.base_graphdef, self.frozen)
    assert self.ref_params is not None, "this TrainState has no reference parameters"
    return nnx.merge(self.graphdef, self.ref_params)


def _mesh_of(tree: PyTree) -> Mesh:
  leaf = jax.tree.leaves(tree)[0]
  assert isinstance(leaf.sharding, NamedSharding), "parameters must be placed on a mesh"
  return leaf.sharding.mesh


def _copy(tree: PyTree) -> PyTree:
  """Fresh buffers with the same values and shardings."""
  shardings = jax.tree.map(lambda x: x.sharding, tree)
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def init_opt_state(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
  """tx.init(params) on the mesh: params-shaped subtrees sharded like params, rest replicated."""
  return jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params)[1])(params)


def opt_state_shardings(tx: optax.GradientTransformation, params: PyTree) -> tuple[PyTree, PyTree]:
  """(tx.init(params) as ShapeDtypeStructs, its shardings): params-shaped subtrees (moments)
  sharded like `params` (arrays or sharded ShapeDtypeStructs), the rest replicated."""
  param_def = jax.tree.structure(params)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  replicated = NamedSharding(_mesh_of(params), PartitionSpec())

  def like_params(x):
    try:
      return jax.tree.structure(x) == param_def
    except TypeError:
      return False

  abstract = jax.eval_shape(tx.init, params)
  out = jax.tree.map(lambda x: param_shardings if like_params(x) else replicated, abstract,
                     is_leaf=like_params)
  return abstract, out


def _replicated_key(seed: int, mesh: Mesh) -> jax.Array:
  return multihost.put(jax.random.key(seed), NamedSharding(mesh, PartitionSpec()))


def critic_from_policy(policy: Decoder, seed: int) -> Critic:
  """A Critic whose decoder starts as a copy of `policy` and whose value head is random."""
  policy = params_lib.merge_adapters(policy)  # the critic trains whole, without adapters
  cfg = policy.cfg
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Critic(cfg, rngs=nnx.Rngs(seed))))
  mesh = _mesh_of(nnx.state(policy))
  shardings = params_lib.state_shardings(nnx.merge(graphdef, abstract), mesh)

  @jax.jit
  def build(policy_state):
    critic = Critic(cfg, rngs=nnx.Rngs(seed))  # its random decoder weights are dead code
    nnx.update(critic.decoder, jax.tree.map(jnp.copy, policy_state))
    return jax.lax.with_sharding_constraint(nnx.state(critic), shardings)

  return nnx.merge(graphdef, build(nnx.state(policy)))


def create_state(model: Decoder, tx: optax.GradientTransformation, *, seed: int,
                 reference: bool = False, critic: Optional[Critic] = None,
                 critic_tx: Optional[optax.GradientTransformation] = None) -> TrainState:
  """A TrainState that takes over `model`'s parameter arrays; the reference is a copy, or
  with LoRA the base model (adapters off).

  The first update donates those arrays, so use `state.model()` afterwards, not `model`.
  """
  adapted = model.cfg.lora_rank > 0
  if adapted:
    graphdef, params, frozen = nnx.split(model, lora.LoraParam, ...)
  else:
    (graphdef, params), frozen = nnx.split(model), None
  mesh = _mesh_of(params)
  critic_state = None
  if critic is not None:
    assert critic_tx is not None, "a critic needs its own optimizer"
    c_graphdef, c_params = nnx.split(critic)
    critic_state = CriticState(graphdef=c_graphdef, tx=critic_tx, params=c_params,
                               opt_state=init_opt_state(critic_tx, c_params))
  step = multihost.put(np.zeros((), np.int32), NamedSharding(mesh, PartitionSpec()))
  trained = f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M trained parameters"
  with timing.compiling("optimizer state init", trained):
    opt_state = init_opt_state(tx, params)
  ref_params = None
  if reference and not adapted:
    with timing.compiling("reference copy", trained):
      ref_params = _copy(params)
  return TrainState(graphdef=graphdef, tx=tx, params=params, opt_state=opt_state, step=step,
                    rng=_replicated_key(seed, mesh), ref_params=ref_params,
                    critic=critic_state, frozen=frozen,
                    base_graphdef=params_lib.base_graphdef(model.cfg) if adapted else None,
                    ref_is_base=reference and adapted)


def rl_updates_per_step(rl_config, critic: bool = False) -> int:
  """Optimizer updates per RL step: epochs_per_batch x (batch_size / mini_batch_size), or the
  critic's (rl.critic_epochs, rl.critic_mini_batch_size; 0: the actor's)."""
  rl = rl_config
  field, mini, epochs = "mini_batch_size", rl.mini_batch_size, rl.epochs_per_batch
  if critic and rl.critic_mini_batch_size:
    field, mini = "critic_mini_batch_size", rl.critic_mini_batch_size
  if critic and rl.critic_epochs:
    epochs = rl.critic_epochs
  if rl.batch_size % mini:
    raise ValueError(f"rl.{field}={mini} must divide rl.batch_size={rl.batch_size}")
  return epochs * (rl.batch_size // mini)


def rl_schedule(rl_config, critic: bool = False) -> dict:
  """learning_rate_schedule's arguments for the policy's (or the critic's) optimizer; the
  schedules count optimizer updates: rl.steps x rl_updates_per_step."""
  rl = rl_config
  warmup_ratio, warmup_steps = rl.warmup_ratio, rl.warmup_steps
  if critic and rl.critic_warmup_steps >= 0:
    warmup_steps = rl.critic_warmup_steps
  elif critic and rl.critic_warmup_ratio >= 0:
    warmup_ratio, warmup_steps = rl.critic_warmup_ratio, -1
  return dict(learning_rate=rl.critic_learning_rate if critic else rl.learning_rate,
              total_steps=rl.steps * rl_updates_per_step(rl, critic), warmup_ratio=warmup_ratio,
              schedule=rl.schedule, warmup_steps=int(warmup_steps),
              min_lr_ratio=rl.min_lr_ratio)


def rl_optimizer(rl_config, critic: bool = False) -> optax.GradientTransformation:
  """The AdamW of the policy (or of the critic) from config.rl."""
  rl = rl_config
  return opt_lib.make_optimizer(
      **rl_schedule(rl, critic),
      max_grad_norm=rl.critic_max_grad_norm if critic else rl.max_grad_norm,
      weight_decay=rl.weight_decay, b1=rl.adam_b1, b2=rl.adam_b2)


def move_unused_in_rollouts(state: TrainState, memory_kind: str) -> TrainState:
  """The optimizer state and the reference (and the critic's optimizer state) moved to
  `memory_kind`: "pinned_host" while the sampler holds the device's memory, "device" before
  scoring and the update. Each array keeps its sharding; only the memory it lives in changes.
  """
  def move(tree):
    return jax.tree.map(
        lambda x: jax.device_put(x, x.sharding.with_memory_kind(memory_kind)), tree)

  critic = state.critic
  if critic is not None:
    critic = critic.replace(opt_state=move(critic.opt_state))
  ref = move(state.ref_params) if state.ref_params is not None else None
  return state.replace(opt_state=move(state.opt_state), ref_params=ref, critic=critic)


def create_rl_state(model: Decoder, config) -> TrainState:
  """The RL state from config.rl: AdamW policy, reference when kl_coef > 0, critic for PPO.

  The schedules count optimizer updates: rl.steps x rl_updates_per_step(config.rl).
  """
  from rag_r1_jax.training.rl.step import ALGORITHMS  # it builds on this module
  rl = config.rl
  if rl.algorithm not in ALGORITHMS:
    raise ValueError(f"rl.algorithm={rl.algorithm!r}; valid: {list(ALGORITHMS)}")
  critic = critic_tx = None
  if ALGORITHMS[rl.algorithm].critic:
    critic = critic_from_policy(model, config.seed + 1)
    critic_tx = rl_optimizer(rl, critic=True)
  return create_state(model, rl_optimizer(rl), seed=config.seed, reference=rl.kl_coef > 0,
                      critic=critic, critic_tx=critic_tx)


def create_sft_state(model: Decoder, config, total_steps: int) -> TrainState:
  """The SFT state from config.sft (no reference, no critic); total_steps sizes the schedule."""
  sft = config.sft
  tx = opt_lib.make_optimizer(sft.learning_rate, total_steps, sft.warmup_ratio, sft.schedule,
                              sft.max_grad_norm, sft.weight_decay)
  return create_state(model, tx, seed=config.seed)


def saved(state: TrainState) -> TrainState:
  """What a checkpoint holds: the state without the frozen weights (LoRA's base model, which
  a resumed run loads from the model path again)."""
  return state.replace(frozen=None)


def restore(manager, state: TrainState, step: int) -> tuple[TrainState, dict]:
  """(state, meta) of checkpoint `step` of `manager` (checkpoints.CheckpointManager), restored
  onto `state`'s shardings; the frozen weights are `state`'s own."""
  restored, meta = manager.restore(abstract(saved(state)), step)
  return restored.replace(frozen=state.frozen), meta


def shardings(state: TrainState) -> TrainState:
  """The state's NamedShardings, same structure (a restore target with jax.eval_shape)."""
  return jax.tree.map(lambda x: x.sharding, state)


def abstract(state: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the target for CheckpointManager.restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)

