"""Training with LoRA: only adapters change and hold optimizer state, the reference is the base
with adapters off, SFT / GRPO / PPO updates run, checkpoints hold adapters + optimizer state."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from rag_r1_jax import sharding
from rag_r1_jax.models import lora
from rag_r1_jax.training import checkpoints, logprobs
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import step as rl_step
from tests.training import test_update_common as h
from tests.training.sft.test_step import _config as sft_config
from tests.training.sft.test_step import _examples as sft_examples

ADAPTED = h.TINY.replace(vocab_size=128, lora_rank=2, lora_alpha=4.0,
                         lora_targets=tuple(lora.TARGETS))
ROWS, SEQ = 16, 24


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
  for x, y in zip(_host(a), _host(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _adam_moments(opt_state):
  return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]


def _check_only_adapters_trained(state, base_before, adapters_before):
  """Base weights bit-identical, every adapter factor moved, optimizer state adapter-sized."""
  assert all(isinstance(v, lora.LoraParam) for v in jax.tree.leaves(
      state.params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  assert not any(isinstance(v, lora.LoraParam) for v in jax.tree.leaves(
      state.frozen, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  _assert_same(state.frozen, base_before)
  moved = [not np.array_equal(a, b) for a, b in zip(_host(state.params), adapters_before)]
  assert all(moved), moved
  (adam,) = _adam_moments(state.opt_state)
  assert jax.tree.structure(adam.mu) == jax.tree.structure(state.params)
  adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(state.frozen))
  opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
  assert 2 * adapter_bytes <= opt_bytes <= 2 * adapter_bytes + 64  # mu, nu and two counters
  assert opt_bytes < base_bytes / 4


def test_sft_with_lora_trains_adapters_only():
  examples = sft_examples()
  config = sft_config(learning_rate=3e-2)
  epochs = 6
  total = epochs * sft_data.steps_per_epoch(len(examples), config.sft.batch_size)
  hp = sft_step.SFTHparams.from_config(config, total)
  mesh = h.mesh(2, 2, 1)
  model = h.model(mesh, ADAPTED)
  # A random base's head (std 0.02) keeps every distribution near uniform whatever the hidden
  # states; a wider one, as a trained model has, lets adapters on the layers move the loss.
  model.lm_head.set_value(model.lm_head[...] * 50)
  state = train_state.create_sft_state(model, config, total)
  base, adapters = _host(state.frozen), _host(state.params)
  before = sft_step.sft_validation_loss(state, examples, hp)
  losses = []
  for epoch in range(epochs):
    state, rows = sft_step.sft_epoch(state, examples, hp, epoch)
    losses += [r["loss"] for r in rows]
  after = sft_step.sft_validation_loss(state, examples, hp)
  assert int(state.step) == total
  assert after < 0.5 * before and np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
  _check_only_adapters_trained(state, base, adapters)
  # The export's model: the adapters merged, the same validation loss.
  merged = state.merged_model()
  graphdef, params = nnx.split(merged)
  merged_state = state.replace(graphdef=graphdef, params=params, frozen=None,
                               base_graphdef=None)
  assert sft_step.sft_validation_loss(merged_state, examples, hp) == pytest.approx(after,
                                                                                   rel=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_grpo_with_lora_reference_is_the_base_model(scan):
  cfg = ADAPTED.replace(scan_layers=scan, remat="full" if scan else "none")
  mesh = h.mesh(2, 2, 1)
  # Two minibatches: old log-probs and reference log-probs are both scored.
  config = h.rl_config(kl_coef=0.05, mini_batch_size=2)
  state = train_state.create_rl_state(h.model(mesh, cfg, seed=3), config)
  base_model = h.model(mesh, cfg.without_adapters(), seed=3)
  assert state.ref_params is None and state.has_reference
  base, adapters = _host(state.frozen), _host(state.params)
  for seed in range(2):
    batch = h.trajectory_batch(ROWS, SEQ, cfg.vocab_size, seed=seed)
    state, metrics = rl_trainer.rl_update(state, batch, config)
    assert metrics["skipped"] == 0 and np.isfinite(metrics["loss"])
  assert metrics["kl_ref"] > 0  # the policy has moved away from its reference
  _check_only_adapters_trained(state, base, adapters)

  hp = rl_step.RLHparams.from_config(config)
  mb = sharding.put_rows({k: v[:8] for k, v in batch.items() if k in (
      "tokens", "positions", "attention_mask", "loss_mask")}, mesh)
  with jax.set_mesh(mesh):
    scored = rl_step.score(state, mb, hp)
  mask = np.asarray(mb["loss_mask"])
  want = np.asarray(logprobs.token_logprobs(base_model, mb)[0]) * mask
  np.testing.assert_allclose(np.asarray(scored["ref_logprobs"]), want, atol=1e-5)
  assert np.abs(np.asarray(scored["old_logprobs"]) - want).max() > 1e-3


def test_ppo_with_lora_trains_policy_adapters_and_a_whole_critic():
  mesh = h.mesh(2, 1, 1)
  config = h.rl_config(algorithm="ppo", kl_coef=0.05)
  state = train_state.create_rl_state(h.model(mesh, ADAPTED, seed=1), config)
  assert not nnx.state(nnx.merge(state.critic.graphdef, state.critic.params), lora.LoraParam)
  base, adapters = _host(state.frozen), _host(state.params)
  critic_before = _host(state.critic.params)
  state, metrics = rl_trainer.rl_update(state, h.trajectory_batch(ROWS, SEQ, 128, seed=2), config)
  assert metrics["skipped"] == 0 and metrics["critic_skipped"] == 0
  _check_only_adapters_trained(state, base, adapters)
  assert all(not np.array_equal(a, b) for a, b in zip(_host(state.critic.params), critic_before))


def test_checkpoint_holds_adapters_and_optimizer_state_not_the_base(tmp_path):
  mesh = h.mesh(2, 1, 1)
  config = h.rl_config(kl_coef=0.05)
  state = train_state.create_rl_state(h.model(mesh, ADAPTED, seed=5), config)
  state, _ = rl_trainer.rl_update(state, h.trajectory_batch(ROWS, SEQ, 128, seed=0), config)
  with checkpoints.CheckpointManager(str(tmp_path / "lora"), async_save=False) as manager:
    manager.save(1, train_state.saved(state), {"step": 1})
    # A resumed run: the base comes from the model path again, the rest from the checkpoint.
    fresh = train_state.create_rl_state(h.model(mesh, ADAPTED, seed=5), config)
    restored, meta = train_state.restore(manager, fresh, 1)
  assert meta == {"step": 1}
  assert restored.frozen is fresh.frozen
  _assert_same(restored.params, state.params)
  _assert_same(restored.opt_state, state.opt_state)
  assert int(restored.step) == int(state.step) == 1
  # What the checkpoint holds: adapters, their moments, counters, keys; not the base weights.
  saved_bytes = sum(x.nbytes for x in jax.tree.leaves(train_state.saved(state)))
  assert saved_bytes < sum(x.nbytes for x in jax.tree.leaves(state.frozen)) / 2
  # Training goes on from the restored state as from the saved one.
  batch = h.trajectory_batch(ROWS, SEQ, 128, seed=1)
  a, _ = rl_trainer.rl_update(state, batch, config)
  b, _ = rl_trainer.rl_update(restored, batch, config)
  _assert_same(a.params, b.params)
