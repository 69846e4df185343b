"""On 8 fake devices (fsdp=8) the update steps split their rows over the devices: every
activation a device computes holds 1/8 of the microbatch, read off the partitioned HLO."""

import re

import jax
import pytest
from ml_collections import ConfigDict

from rag_r1_jax import dry_run, sharding
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.training.rl import step as rl_step
from tests.training.test_update_common import rl_config

# Dimensions chosen to be told apart in HLO shapes: seq 40, hidden 48, MLP 80, vocab 96.
SEQ, HIDDEN, MLP, VOCAB = 40, 48, 80, 96
CFG = DecoderConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=12, scan_layers=True, remat="full")


def _fsdp_mesh():
  return sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 8, "tensor": 1}))


def _activation_rows(hlo: str) -> set[int]:
  """Leading dims of every [rows, SEQ, feature] float array in the partitioned HLO."""
  pattern = rf"f32\[(\d+),{SEQ},(?:{HIDDEN}|{MLP}|{VOCAB})\]"
  return {int(m) for m in re.findall(pattern, hlo)}


@pytest.mark.parametrize("per_device", [1, 2])
def test_rl_update_activations_hold_an_eighth_of_each_microbatch(per_device):
  config = rl_config(mini_batch_size=8, group_size=4, batch_size=8,
                     micro_batch_size_per_device=per_device)
  mesh = _fsdp_mesh()
  hp = rl_step.RLHparams.from_config(config, sharding.batch_shards(mesh))
  assert hp.microbatches == 32 // (8 * per_device)
  state = dry_run.rl_state(config, CFG, mesh)
  fields = ("tokens", "positions", "attention_mask", "loss_mask", "advantages",
            "sampler_logprobs", "ref_logprobs")
  mb = dry_run.abstract_rows(mesh, 32, SEQ, fields)
  with jax.set_mesh(mesh):
    hlo = rl_step.minibatch_update.lower(state, mb, hp).compile().as_text()
  rows = _activation_rows(hlo)
  assert rows == {per_device}, rows  # never 8 x per_device (a microbatch) or 32 (the batch)


def test_sft_step_activations_hold_an_eighth_of_each_microbatch():
  config = rl_config()
  config.sft.batch_size = 32
  config.sft.micro_batch_size_per_device = 2
  config.sft.max_length = SEQ
  mesh = _fsdp_mesh()
  hp = sft_step.SFTHparams.from_config(config, 100, sharding.batch_shards(mesh))
  assert hp.microbatches == 2
  tx = rl_step.opt_lib.make_optimizer(1e-3, 100, 0.0, "constant", 1.0, 0.0)
  state = dry_run.abstract_train_state(CFG, mesh, tx, reference=False)
  batch = dry_run.abstract_rows(mesh, 32, SEQ, dry_run.SFT_FIELDS)
  with jax.set_mesh(mesh):
    hlo = sft_step.sft_update.lower(state, batch, hp).compile().as_text()
  assert _activation_rows(hlo) == {2}


def test_gradients_stay_sharded_like_the_weights():
  """A length-cut microbatch's gradients come out split over fsdp, as the weights are."""
  config = rl_config(mini_batch_size=8, group_size=4, batch_size=8, micro_batch_size_per_device=1)
  mesh = _fsdp_mesh()
  hp = rl_step.RLHparams.from_config(config, sharding.batch_shards(mesh))
  state = dry_run.rl_state(config, CFG, mesh)
  mb = dry_run.abstract_rows(mesh, 8, SEQ, ("tokens", "positions", "attention_mask", "loss_mask",
                                            "advantages", "sampler_logprobs", "ref_logprobs"))
  with jax.set_mesh(mesh):
    compiled = rl_step.weighted_gradients.lower(state, mb, hp, jax.ShapeDtypeStruct(
        (), jax.numpy.float32)).compile()
  grads = compiled.output_shardings["actor"][2]
  params = jax.tree.map(lambda x: x.sharding, state.params)
  for g, p, x in zip(jax.tree.leaves(grads), jax.tree.leaves(params),
                     jax.tree.leaves(state.params)):
    assert g.is_equivalent_to(p, x.ndim), (g, p)
  assert compiled.memory_analysis().output_size_in_bytes <= dry_run.per_device_bytes(
      state.params) + 1024


def test_offloading_during_rollouts_keeps_shardings_and_the_update_exact():
  """rl.offload_during_rollout: optimizer state and reference go to host memory and back, with
  their shardings, and the next update equals one whose state never moved."""
  import numpy as np
  from rag_r1_jax.models import params as params_lib
  from rag_r1_jax.training import train_state
  from rag_r1_jax.training.rl import trainer as rl_trainer
  from tests.training.test_update_common import trajectory_batch

  config = rl_config(mini_batch_size=2, group_size=4, batch_size=2, kl_coef=0.01)
  mesh = _fsdp_mesh()
  cfg = CFG.replace(scan_layers=False, remat="none")
  batch = trajectory_batch(8, 24, VOCAB)
  results = []
  for offload in (False, True):
    state = train_state.create_rl_state(params_lib.init_on_mesh(cfg, mesh, seed=3), config)
    before = jax.tree.map(lambda x: x.sharding, state.opt_state)
    if offload:
      state = train_state.move_unused_in_rollouts(state, "pinned_host")
      kinds = {x.sharding.memory_kind for x in jax.tree.leaves((state.opt_state,
                                                                state.ref_params))}
      assert kinds == {"pinned_host"}
      assert {x.sharding.memory_kind for x in jax.tree.leaves(state.params)} == {"device"}
      state = train_state.move_unused_in_rollouts(state, "device")
      after = jax.tree.map(lambda x: x.sharding, state.opt_state)
      assert jax.tree.leaves(after) == jax.tree.leaves(before)
    state, metrics = rl_trainer.rl_update(state, batch, config)
    results.append((jax.tree.map(np.asarray, state.params), metrics["loss"]))
  for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_array_equal(a, b)
  assert results[0][1] == results[1][1]
