"""The dry run sizes a LoRA run as the run builds it: the base weights frozen, optimizer state
for the adapters alone, the KL reference the base itself (no second copy of the weights)."""

import jax
import pytest

from rag_r1_jax import dry_run, sharding
from rag_r1_jax.models import lora
from tests.test_dry_run import _small_config


def _configs():
  full = _small_config()
  full.rl.kl_coef = 0.001  # a reference: a copy of the weights in full fine-tuning
  adapted = full.copy_and_resolve_references()
  adapted.model.lora_rank = 2
  return full, adapted


def test_lora_train_state_holds_one_copy_of_the_weights_and_adapter_sized_moments():
  full, adapted = _configs()
  mesh = sharding.make_mesh(full.mesh)
  cfg_full, _ = dry_run.model_config(full)
  cfg_lora, _ = dry_run.model_config(adapted)
  assert cfg_lora.lora_rank == 2 and cfg_full.lora_rank == 0
  s_full = dry_run.rl_state(full, cfg_full, mesh)
  s_lora = dry_run.rl_state(adapted, cfg_lora, mesh)
  assert s_full.ref_params is not None and s_full.frozen is None
  assert s_lora.ref_params is None and s_lora.ref_is_base and s_lora.has_reference
  is_var = lambda x: hasattr(x, "get_metadata")  # noqa: E731
  assert all(isinstance(v, lora.LoraParam)
             for v in jax.tree.leaves(s_lora.params, is_leaf=is_var))
  weights = dry_run.per_device_bytes(s_full.params)
  adapters = dry_run.per_device_bytes(s_lora.params)
  # The frozen base is the full model's weights; the adapters a fraction of them.
  assert dry_run.per_device_bytes(s_lora.frozen) == weights
  assert 0 < adapters < 0.5 * weights
  # Full: weights + reference + two Adam moments; LoRA: weights + adapters + their moments.
  assert dry_run.per_device_bytes(s_full) == pytest.approx(4 * weights, rel=0.01)
  assert dry_run.per_device_bytes(s_lora) == pytest.approx(weights + 3 * adapters, rel=0.01)
  adapted.rl.offload_during_rollout = True
  assert dry_run.rollout_resident(adapted, cfg_lora, mesh) == weights + adapters


def test_lora_steps_need_less_memory_than_full_fine_tuning():
  full, adapted = _configs()
  mesh = sharding.make_mesh(full.mesh)
  peaks = {}
  for name, config in (("full", full), ("lora", adapted)):
    parts = dry_run.run(config, mesh, ("sft", "rl"), log=lambda _: None)
    peaks[name] = {p.name: p.peak for p in parts}
  assert peaks["full"].keys() == peaks["lora"].keys()
  assert {"sft step", "rl scoring", "rl update", "rollout decode"} <= peaks["lora"].keys()
  for part, peak in peaks["lora"].items():
    assert peak < peaks["full"][part], (part, peak, peaks["full"][part])
