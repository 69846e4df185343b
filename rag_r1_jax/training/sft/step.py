"""Stage-1 SFT: the jitted next-token update, an epoch loop and the validation loss.

The loss is the mean negative log-likelihood over tokens whose loss_mask is 1 (the policy's
response; prompt, retrieved information and padding are masked). With microbatches each
microbatch's mean is averaged (optimizer.accumulate_gradients). Batches come from
sft_data.batches, so their shapes are bucketed and the step compiles once per bucket (once in
all with `sft.pack_length`).
"""

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rag_r1_jax import multihost, timing
from rag_r1_jax.sharding import put_rows
from rag_r1_jax.training import logprobs as logprobs_lib
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.train_state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SFTHparams:
  """Static SFT settings (from config.sft); hashable for jit."""
  batch_size: int
  length_bucket: int
  microbatches: int
  learning_rate: float
  total_steps: int
  warmup_ratio: float
  schedule: str
  seed: int
  logprob_chunk: int = 0
  pack_length: int = 0  # 0: padded batches; N: examples packed into rows of N tokens

  @classmethod
  def from_config(cls, config, total_steps: int, batch_shards: int = 1) -> "SFTHparams":
    """total_steps: the sum of sft_data.epoch_steps over the epochs; batch_shards: the mesh's
    data x fsdp, which sft.micro_batch_size_per_device multiplies."""
    sft = config.sft
    micro = opt_lib.microbatch_count(sft.batch_size, sft.microbatches,
                                     sft.micro_batch_size_per_device, batch_shards, "sft")
    return cls(batch_size=sft.batch_size, length_bucket=sft.length_bucket,
               microbatches=micro, learning_rate=sft.learning_rate, total_steps=total_steps,
               warmup_ratio=sft.warmup_ratio, schedule=sft.schedule, seed=config.seed,
               logprob_chunk=config.model.logprob_chunk, pack_length=sft.pack_length)


def nll_sums(params: nnx.State, batch: Batch, graphdef: nnx.GraphDef,
             chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum of -log p over masked target tokens, number of them): float32 scalars."""
  logp, _ = logprobs_lib.token_logprobs(nnx.merge(graphdef, params), batch, chunk)
  mask = batch["loss_mask"].astype(jnp.float32)
  return -(logp * mask).sum(), mask.sum()


def sft_loss(params: nnx.State, batch: Batch, graphdef: nnx.GraphDef,
             chunk: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token NLL over the masked (response) tokens, and the token count."""
  total, count = nll_sums(params, batch, graphdef, chunk)
  loss = total / jnp.maximum(count, 1.0)
  return loss, {"tokens": count}


@functools.partial(jax.jit, donate_argnums=0, static_argnames="hp")
def sft_update(state: TrainState, batch: Batch, hp: SFTHparams) -> tuple[TrainState, dict]:
  """One SFT optimizer update (guarded against non-finite loss / gradients)."""
  loss_fn = state.bind_frozen(functools.partial(sft_loss, graphdef=state.graphdef,
                                                chunk=hp.logprob_chunk))
  loss, aux, grads = opt_lib.accumulate_gradients(loss_fn, state.params, batch,
                                                  hp.microbatches)
  grad_norm = optax.global_norm(grads)
  params, opt_state, finite = opt_lib.nonfinite_guard(state.tx, grads, state.opt_state,
                                                      state.params, loss)
  lr = opt_lib.learning_rate_schedule(hp.learning_rate, hp.total_steps, hp.warmup_ratio,
                                      hp.schedule)(state.step)
  metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr,
             "tokens": aux["tokens"] * hp.microbatches,
             "skipped": 1.0 - finite.astype(jnp.float32)}
  state = state.replace(params=params, opt_state=opt_state,
                        step=state.step + finite.astype(jnp.int32))
  return state, metrics


@functools.partial(jax.jit, static_argnames="chunk")
def _eval_sums(state: TrainState, batch: Batch, chunk: int) -> tuple[jax.Array, jax.Array]:
  return nll_sums(state.full_params(), batch, state.graphdef, chunk)


@jax.jit
def _params_finite(params: nnx.State) -> jax.Array:
  return opt_lib.all_finite(jnp.zeros((), jnp.float32), params)


def params_finite(state: TrainState) -> bool:
  """Whether every parameter of the policy is finite."""
  with jax.set_mesh(_mesh(state)):
    return bool(multihost.fetch(_params_finite(state.params)))


def _mesh(state: TrainState):
  return jax.tree.leaves(state.params)[0].sharding.mesh


def sft_epoch(state: TrainState, examples: Sequence[sft_data.SFTExample], hp: SFTHparams,
              epoch: int, start_batch: int = 0,
              on_step: Optional[Callable[[TrainState, dict], None]] = None
              ) -> tuple[TrainState, list[dict[str, float]]]:
  """One epoch (from batch `start_batch`, for resuming mid-epoch): (state, per-step metrics).

  on_step(state, metrics) runs after each step (logging, checkpoints); metrics are floats.
  The state is donated at every step: keep only the returned one.
  """
  mesh = _mesh(state)
  rows = []
  for batch in sft_data.batches(examples, hp.batch_size, hp.length_bucket, hp.seed, epoch,
                                start=start_batch, pack_length=hp.pack_length):
    shape = f"{list(batch['tokens'].shape)} in {hp.microbatches} microbatch(es)"
    with jax.set_mesh(mesh), timing.compiling("sft update", shape):
      state, metrics = sft_update(state, put_rows(batch, mesh), hp)
    metrics = {k: float(v) for k, v in multihost.fetch(metrics).items()}
    rows.append(metrics)
    if on_step is not None:
      on_step(state, metrics)
  return state, rows


def sft_validation_loss(state: TrainState, examples: Sequence[sft_data.SFTExample],
                        hp: SFTHparams) -> float:
  """Mean NLL per target token over all `examples` (every token weighs the same)."""
  mesh = _mesh(state)
  total, count = 0.0, 0.0
  for batch in sft_data.batches(examples, hp.batch_size, hp.length_bucket, hp.seed, 0,
                                shuffle=False):
    with jax.set_mesh(mesh), timing.compiling("sft validation loss",
                                              str(list(batch["tokens"].shape))):
      sums = _eval_sums(state, put_rows(batch, mesh), hp.logprob_chunk)
    s, c = multihost.fetch(sums)
    total, count = total + float(s), count + float(c)
  return total / max(count, 1.0)
