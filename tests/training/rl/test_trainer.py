"""GRPO / PPO updates: sharded == single device, hand-checked loss, non-finite skip, bf16."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rag_r1_jax import timing
from rag_r1_jax.rl import advantages as adv_lib
from rag_r1_jax.rl import losses
from rag_r1_jax.training import optimizer as opt_lib
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.rl import step as rl_step
from tests.training import test_update_common as h

ROWS, SEQ = 16, 24


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _run(mesh, algorithm, batch, **rl):
  config = h.rl_config(algorithm=algorithm, **rl)
  state = train_state.create_rl_state(h.model(mesh, seed=3), config)
  before = train_state.shardings(state)
  state, metrics = rl_trainer.rl_update(state, batch, config)
  same = jax.tree.map(lambda a, b: a == b, before, train_state.shardings(state))
  assert all(jax.tree.leaves(same)), "the update changed the state's shardings"
  return state, metrics


_SHARDED_KW = dict(batch_size=4, mini_batch_size=4, kl_coef=0.05, entropy_coef=0.01)


@functools.lru_cache(maxsize=None)
def _single_device(algorithm):
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=4)
  state, metrics = _run(h.mesh(), algorithm, batch, **_SHARDED_KW)
  return _params(state), metrics


@pytest.mark.parametrize("algorithm,shape", [("grpo", (8, 1, 1)), ("grpo", (2, 2, 2)),
                                             ("ppo", (2, 2, 2))])
def test_sharded_update_equals_single_device(algorithm, shape):
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=4)
  single, m1 = _single_device(algorithm)
  sharded, m8 = _run(h.mesh(*shape), algorithm, batch, **_SHARDED_KW)
  p8 = jax.tree.leaves(sharded.params)
  assert any(len(x.sharding.device_set) == 8 for x in p8)
  # Parameters are split only over fsdp / tensor; data parallelism replicates them.
  assert any(not x.sharding.is_fully_replicated for x in p8) == (shape != (8, 1, 1))
  diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(single, _params(sharded))])
  # AdamW's first step is lr * g / (|g| + eps) = +-lr = 1e-3 unless |g| is ~eps, where the
  # reduction order of a sharded sum shows: every parameter within 10% of one step, and
  # almost all of them equal to float32 rounding.
  assert diffs.max() < 1e-4
  assert np.mean(diffs > 1e-6) < 1e-3
  for key in ("loss", "pg_loss", "entropy", "grad_norm"):
    assert m8[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
  assert m8["skipped"] == 0 and int(sharded.step) == 1


def test_first_grpo_loss_equals_direct_loss():
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=5)
  mesh = h.mesh()
  model = h.model(mesh, seed=3)
  logits = jax.jit(lambda b: model(b["tokens"], positions=b["positions"],
                                   attention_mask=b["attention_mask"])[0])(
                                       {k: jnp.asarray(v) for k, v in batch.items()})
  logp = jax.nn.log_softmax(logits, axis=-1)
  direct = jnp.take_along_axis(logp[:, :-1], jnp.asarray(batch["tokens"])[:, 1:, None], -1)[..., 0]
  direct = jnp.pad(direct, ((0, 0), (1, 0)))
  mask = jnp.asarray(batch["loss_mask"])
  adv = adv_lib.grpo_advantages(jnp.asarray(batch["rewards"]), mask,
                                group_ids=jnp.asarray(batch["group_ids"]))
  expected, parts = losses.grpo_loss(direct, direct, direct, adv, mask, clip_low=0.2,
                                     clip_high=0.2, kl_coef=0.0)
  # old == new at the first step: ratio 1, so the loss is -mean(advantage) over the mask.
  assert float(expected) == pytest.approx(-float((adv * mask).sum() / mask.sum()), abs=1e-6)
  config = h.rl_config(kl_coef=0.0, entropy_coef=0.0)
  state = train_state.create_rl_state(model, config)
  assert state.ref_params is None
  state, metrics = rl_trainer.rl_update(state, batch, config)
  assert metrics["updates"] == 1 and metrics["skipped"] == 0
  assert metrics["loss"] == pytest.approx(float(expected), abs=1e-6)
  assert metrics["pg_loss"] == pytest.approx(float(parts["pg_loss"]), abs=1e-6)
  assert metrics["kl"] == 0.0 and metrics["clip_fraction"] == 0.0
  assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
  mismatch = float((jnp.abs(direct - batch["sampler_logprobs"]) * mask).sum() / mask.sum())
  assert metrics["logprob_mismatch"] == pytest.approx(mismatch, rel=1e-5)
  assert metrics["learning_rate"] == pytest.approx(1e-3)
  assert metrics["entropy"] == pytest.approx(np.log(h.TINY.vocab_size), abs=0.05)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_single_update_without_old_logprob_pass_equals_scored_update(monkeypatch, kl_coef):
  """One GRPO update per batch skips the old-log-prob forward pass; results are the same."""
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=6)
  config = h.rl_config(kl_coef=kl_coef, entropy_coef=0.0)
  hp = rl_step.RLHparams.from_config(config)
  assert rl_trainer.single_on_policy_update(hp, ROWS)
  assert not rl_trainer.single_on_policy_update(hp, 2 * ROWS)
  assert not rl_trainer.single_on_policy_update(
      rl_step.RLHparams.from_config(h.rl_config(epochs_per_batch=2)), ROWS)
  calls = []
  score = rl_trainer._score_all
  monkeypatch.setattr(rl_trainer, "_score_all",
                      lambda *a, **k: calls.append(k.get("old", True)) or score(*a, **k))

  def run():
    state = train_state.create_rl_state(h.model(h.mesh(), seed=3), config)
    new_state, metrics = rl_trainer.rl_update(state, batch, config)
    return new_state, h.without_timing(metrics)

  skipped_state, skipped = run()
  # Without a reference nothing is scored; with one, only the reference log-probs are.
  assert calls == ([False] if kl_coef else [])
  monkeypatch.setattr(rl_trainer, "single_on_policy_update", lambda hp, rows: False)
  scored_state, scored = run()
  assert calls[-1] is True
  for a, b in zip(_params(skipped_state), _params(scored_state)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert set(skipped) == set(scored) - {"kl_ref"}
  for key in skipped:
    assert skipped[key] == pytest.approx(scored[key], rel=1e-5, abs=1e-6), key
  if kl_coef:  # the update's KL before its step is the scored KL to the reference
    assert skipped["kl"] == pytest.approx(scored["kl_ref"], rel=1e-5, abs=1e-7)


def test_nonfinite_step_is_skipped_then_training_proceeds():
  config = h.rl_config(kl_coef=0.01)
  state = train_state.create_rl_state(h.model(h.mesh(2, 2, 1), seed=3), config)
  before = _params(state)
  opt_before = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)]
  bad = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=6)
  bad["rewards"][2] = np.nan  # poisons group 0's advantages, hence the loss
  state, metrics = rl_trainer.rl_update(state, bad, config)
  assert metrics["skipped"] == 1 and int(state.step) == 0
  assert np.isnan(metrics["loss"])
  for a, b in zip(before, _params(state)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(opt_before, jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, np.asarray(b))
  streak = opt_lib.NonfiniteStreak(limit=2, field="rl.max_nonfinite_steps").update(metrics["skipped"] == 0, step=0)
  assert streak.count == 1
  good = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=6)
  state, metrics = rl_trainer.rl_update(state, good, config)
  assert metrics["skipped"] == 0 and int(state.step) == 1 and np.isfinite(metrics["loss"])
  assert streak.update(metrics["skipped"] == 0, step=1).count == 0
  changed = [not np.array_equal(a, b) for a, b in zip(before, _params(state))]
  assert sum(changed) > len(changed) // 2


def test_bfloat16_microbatched_updates_keep_float32_state_and_compile_once():
  config = h.rl_config(epochs_per_batch=2, mini_batch_size=2, microbatches=2)
  cfg = h.TINY.replace(dtype="bfloat16")
  state = train_state.create_rl_state(h.model(h.mesh(4, 1, 1), cfg, seed=3), config)
  before = _params(state)
  batch = h.trajectory_batch(ROWS, SEQ, cfg.vocab_size, seed=8)
  state, metrics = rl_trainer.rl_update(state, batch, config)
  compiled = rl_step.minibatch_update._cache_size()
  state, metrics = rl_trainer.rl_update(state, batch, config)
  assert rl_step.minibatch_update._cache_size() == compiled
  assert metrics["updates"] == 4 and metrics["skipped"] == 0 and int(state.step) == 8
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))
  assert metrics["clip_fraction"] > 0 or metrics["ratio_mean"] != 1.0
  assert not all(np.array_equal(a, b) for a, b in zip(before, _params(state)))


def test_bad_batch_size_names_the_field():
  config = h.rl_config(mini_batch_size=3, batch_size=3)
  state = train_state.create_rl_state(h.model(h.mesh()), config)
  with pytest.raises(ValueError, match="rl.mini_batch_size"):
    rl_trainer.rl_update(state, h.trajectory_batch(16, 12, 64), config)


def _ragged_batch(rows=16, seq=40):
  """A batch whose rows are 10-40 tokens long, so sorted microbatches have different widths."""
  batch = h.trajectory_batch(rows, seq, h.TINY.vocab_size, seed=12)
  lengths = np.linspace(10, seq, rows).astype(int)[np.random.default_rng(1).permutation(rows)]
  real = np.arange(seq)[None] < lengths[:, None]
  loss_mask = real.astype(np.float32)
  loss_mask[:, :4] = 0  # the prompt
  loss_mask[:, 6:8] = 0  # retrieved tokens
  tokens = np.random.default_rng(2).integers(1, h.TINY.vocab_size, (rows, seq)) * real
  batch.update(tokens=tokens.astype(np.int32), attention_mask=real.astype(np.int32),
               loss_mask=loss_mask,
               sampler_logprobs=-1.5 * loss_mask)
  return batch, lengths


def test_microbatch_plan_sorts_cuts_and_weighs_by_the_aggregate():
  batch, lengths = _ragged_batch()
  hp = rl_step.RLHparams.from_config(h.rl_config(microbatches=4, length_bucket=8))
  plan = rl_trainer.microbatch_plan(batch, hp)
  widths = [micro["tokens"].shape[1] for micro, *_ in plan]
  longest = [int(micro["attention_mask"].sum(axis=1).max()) for micro, *_ in plan]
  assert widths == [-(-n // 8) * 8 for n in longest] and widths == sorted(widths)
  assert widths[0] < 40 and widths[-1] == 40
  tokens = [micro["loss_mask"].sum() for micro, *_ in plan]
  assert [w for _, w, _ in plan] == pytest.approx([t / batch["loss_mask"].sum() for t in tokens])
  assert [w for *_, w in plan] == pytest.approx([t / batch["loss_mask"].sum() for t in tokens])
  kept = np.concatenate([micro["tokens"].sum(axis=1) for micro, *_ in plan])
  assert sorted(kept) == sorted(batch["tokens"].sum(axis=1))  # no real token cut
  for agg, weighting, share in (("seq_sum_norm", "global", 0.25),
                                ("seq_mean_token_mean", "global", 0.25),
                                ("token_sum", "global", 1.0), ("token_mean", "mean", 0.25)):
    hp = rl_step.RLHparams.from_config(h.rl_config(microbatches=4, length_bucket=8, loss_agg=agg,
                                                  microbatch_weighting=weighting))
    assert [w for _, w, _ in rl_trainer.microbatch_plan(batch, hp)] == pytest.approx([share] * 4)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,loss_agg", [("grpo", "token_mean"),
                                                ("grpo", "seq_mean_token_mean"),
                                                ("grpo", "seq_sum_norm"), ("grpo", "token_sum"),
                                                ("ppo", "token_mean")])
def test_microbatches_on_every_path_equal_one_full_width_pass(algorithm, loss_agg):
  """Length-cut microbatches and the in-step scan over equal-width ones both give the
  minibatch's own loss and update (rl.microbatch_weighting = global)."""
  batch, _ = _ragged_batch()
  kw = dict(batch_size=4, mini_batch_size=4, loss_agg=loss_agg, entropy_coef=0.01)
  full, m_full = _run(h.mesh(), algorithm, batch, microbatches=1, **kw)
  cut, m_cut = _run(h.mesh(), algorithm, batch, microbatches=4, length_bucket=8, **kw)
  scan, m_scan = _run(h.mesh(), algorithm, batch, microbatches=4, **kw)
  for other, m_other in ((cut, m_cut), (scan, m_scan)):
    for a, b in zip(_params(full), _params(other)):
      np.testing.assert_allclose(a, b, atol=2e-6)
    for key in ("loss", "pg_loss", "entropy", "grad_norm", "ratio_max"):
      assert m_other[key] == pytest.approx(m_full[key], rel=1e-4, abs=1e-6), key
  if loss_agg == "token_mean":  # the older per-microbatch mean weighs microbatches, not tokens
    _, m_mean = _run(h.mesh(), algorithm, batch, microbatches=4, microbatch_weighting="mean",
                     **kw)
    assert m_mean["pg_loss"] != pytest.approx(m_full["pg_loss"], rel=1e-4, abs=1e-6)


def test_length_cut_updates_compile_once_per_width():
  batch, _ = _ragged_batch()
  config = h.rl_config(microbatches=4, length_bucket=8)
  state = train_state.create_rl_state(h.model(h.mesh(), seed=3), config)
  state, _ = rl_trainer.rl_update(state, batch, config)
  compiled = rl_step.weighted_gradients._cache_size()
  state, metrics = rl_trainer.rl_update(state, batch, config)
  assert rl_step.weighted_gradients._cache_size() == compiled
  assert metrics["skipped"] == 0 and int(state.step) == 2


def test_length_cut_scoring_equals_full_width_scoring(capsys, monkeypatch):
  """With rl.length_bucket the scoring pass runs rows of similar length at their own width;
  the log-probs it gathers are the full-width pass's."""
  monkeypatch.setattr(timing, "_announced", set())  # earlier tests announced their shapes
  batch, lengths = _ragged_batch()
  config = h.rl_config(microbatches=4, kl_coef=0.05, epochs_per_batch=2)
  mesh = h.mesh()
  state = train_state.create_rl_state(h.model(mesh, seed=3), config)
  host = {k: np.asarray(v) for k, v in batch.items()}
  full_hp = rl_step.RLHparams.from_config(config)
  cut_hp = dataclasses.replace(full_hp, length_bucket=8)
  capsys.readouterr()
  with jax.set_mesh(mesh):
    full = rl_trainer._score_all(state, host, full_hp, mesh)
    cut = rl_trainer._score_all(state, host, cut_hp, mesh)
  assert full.keys() == cut.keys() == {"old_logprobs", "ref_logprobs"}
  for key in full:
    assert full[key].shape == cut[key].shape == (16, 40)
    assert np.count_nonzero(full[key]) > 100
    np.testing.assert_allclose(cut[key], full[key], atol=1e-5, err_msg=key)
  sorted_lengths = np.sort(lengths).reshape(4, 4)
  widths = [-(-int(chunk.max()) // 8) * 8 for chunk in sorted_lengths]
  said = capsys.readouterr().out
  for width in sorted(set(widths)):
    assert f"compiling rl scoring (policy, reference forward) for [4, {width}] ..." in said
  assert widths[0] < 40
