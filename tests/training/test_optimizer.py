"""Optimizer: schedule values, AdamW against a hand loop, float32 state, accumulation, guard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rag_r1_jax.training import optimizer as opt_lib


def test_constant_schedule_with_warmup():
  lr = opt_lib.learning_rate_schedule(1e-3, total_steps=10, warmup_ratio=0.3,
                                      schedule="constant")
  got = [float(lr(s)) for s in range(12)]
  np.testing.assert_allclose(got, [1e-3 / 3, 2e-3 / 3] + [1e-3] * 10, rtol=1e-6)


def test_cosine_schedule_with_warmup():
  lr = opt_lib.learning_rate_schedule(2.0, total_steps=10, warmup_ratio=0.3, schedule="cosine")
  expected = [2 / 3, 4 / 3, 2.0] + [1.0 + math.cos(math.pi * (s - 3) / 7) for s in range(3, 11)]
  np.testing.assert_allclose([float(lr(s)) for s in range(11)], expected, rtol=1e-5,
                             atol=1e-6)
  assert float(lr(10)) == pytest.approx(0.0, abs=1e-6)
  no_warmup = opt_lib.learning_rate_schedule(2.0, 4, 0.0, "cosine")
  assert float(no_warmup(0)) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="rl.schedule"):
    opt_lib.learning_rate_schedule(1.0, 10, 0.1, "linear")


def test_warmup_steps_override_the_ratio_and_cosine_floor():
  lr = opt_lib.learning_rate_schedule(1.0, total_steps=10, warmup_ratio=0.5, warmup_steps=2)
  np.testing.assert_allclose([float(lr(s)) for s in range(4)], [0.5, 1.0, 1.0, 1.0])
  lr = opt_lib.learning_rate_schedule(1.0, 10, 0.5, warmup_steps=0)
  assert float(lr(0)) == 1.0
  # Cosine to min_lr_ratio x lr: 2 x (.1 + .9 (1 + cos(pi s / 10)) / 2).
  lr = opt_lib.learning_rate_schedule(2.0, 10, 0.0, "cosine", min_lr_ratio=0.1)
  expected = [2 * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, 10) / 10))) for s in range(12)]
  np.testing.assert_allclose([float(lr(s)) for s in range(12)], expected, rtol=1e-5)
  assert float(lr(5)) == pytest.approx(1.1) and float(lr(11)) == pytest.approx(0.2)
  constant = opt_lib.learning_rate_schedule(2.0, 10, 0.0, "constant", min_lr_ratio=0.1)
  assert float(constant(9)) == 2.0
  with pytest.raises(ValueError, match="min_lr_ratio"):
    opt_lib.learning_rate_schedule(1.0, 10, 0.0, "cosine", min_lr_ratio=1.5)


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.5, 0.9)])
def test_make_optimizer_matches_hand_adamw_with_clipping(b1, b2):
  lr, wd, eps, max_norm = 0.1, 0.01, 1e-8, 1.0
  tx = opt_lib.make_optimizer(lr, total_steps=4, warmup_ratio=0.5, schedule="constant",
                              max_grad_norm=max_norm, weight_decay=wd, b1=b1, b2=b2)
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  grads_seq = [{"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])},
               {"w": jnp.array([0.1, -0.2]), "b": jnp.array([0.3])}]
  state = tx.init(params)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step, grads in enumerate(grads_seq):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    scale = min(1.0, max_norm / norm)
    step_lr = lr * min((step + 1) / 2, 1.0)
    for k in p:
      gk = g[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk ** 2
      m_hat, v_hat = m[k] / (1 - b1 ** (step + 1)), v[k] / (1 - b2 ** (step + 1))
      p[k] = p[k] - step_lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p[k])
    for k in p:
      np.testing.assert_allclose(params[k], p[k], rtol=1e-5, atol=1e-7)


def test_state_is_float32_with_bfloat16_params():
  tx = opt_lib.make_optimizer(1e-3, 10, 0.0, "cosine", 1.0, 0.01)
  params = {"w": jnp.ones((3,), jnp.bfloat16)}
  state = tx.init(params)
  float_leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert float_leaves and all(x.dtype == jnp.float32 for x in float_leaves)
  updates, state = tx.update({"w": jnp.full((3,), 0.5, jnp.bfloat16)}, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state)
             if jnp.issubdtype(x.dtype, jnp.floating))


def _linear_loss(params, batch):
  pred = batch["x"] @ params["w"] + params["b"]  # [n]
  err = pred - batch["y"]
  return jnp.mean(err ** 2), {"mean_err": jnp.mean(err)}


def test_accumulate_gradients_equals_full_batch():
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
  params = {"w": jnp.array([0.1, -0.3, 0.2]), "b": jnp.array(0.05)}
  (loss, aux), grads = jax.value_and_grad(_linear_loss, has_aux=True)(params, batch)
  acc = jax.jit(opt_lib.accumulate_gradients, static_argnums=(0, 3))
  for n in (1, 4):
    a_loss, a_aux, a_grads = acc(_linear_loss, params, batch, n)
    np.testing.assert_allclose(a_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(a_aux["mean_err"], aux["mean_err"], rtol=1e-5, atol=1e-7)
    for k in grads:
      np.testing.assert_allclose(a_grads[k], grads[k], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="rl.microbatches"):
    opt_lib.accumulate_gradients(_linear_loss, params, batch, 3)


def test_accumulate_gradients_with_weights():
  rng = np.random.default_rng(1)
  batch = {"x": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
  params = {"w": jnp.array([0.1, -0.3, 0.2]), "b": jnp.array(0.05)}

  def loss_fn(p, b):
    err = b["x"] @ p["w"] + p["b"] - b["y"]
    return jnp.mean(err ** 2), {"mean_err": jnp.mean(err), "err_max": jnp.max(err)}

  parts = [jax.tree.map(lambda x, i=i: x[2 * i:2 * i + 2], batch) for i in range(3)]
  each = [jax.value_and_grad(loss_fn, has_aux=True)(params, p) for p in parts]
  w, mw = jnp.array([0.5, 0.25, 2.0]), jnp.array([0.2, 0.3, 0.5])
  loss, aux, grads = opt_lib.accumulate_gradients(loss_fn, params, batch, 3, (w, mw))
  np.testing.assert_allclose(loss, sum(wi * e[0][0] for wi, e in zip(w, each)), rtol=1e-6)
  np.testing.assert_allclose(aux["mean_err"], sum(m * e[0][1]["mean_err"]
                                                  for m, e in zip(mw, each)), rtol=1e-6)
  np.testing.assert_allclose(aux["err_max"], max(e[0][1]["err_max"] for e in each), rtol=1e-6)
  _, like_loss, _ = opt_lib.accumulate_gradients(loss_fn, params, batch, 3, (w, mw),
                                                 loss_like=("mean_err",))
  np.testing.assert_allclose(like_loss["mean_err"], sum(wi * e[0][1]["mean_err"]
                                                        for wi, e in zip(w, each)), rtol=1e-6)
  for k in params:
    np.testing.assert_allclose(grads[k], sum(wi * e[1][k] for wi, e in zip(w, each)),
                               rtol=1e-5, atol=1e-7)


def test_update_count_reads_the_schedule_step():
  tx = opt_lib.make_optimizer(0.1, 10, 0.0)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  assert int(opt_lib.update_count(state)) == 0
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
  assert int(opt_lib.update_count(state)) == 3


def test_accumulate_gradients_returns_float32_for_bfloat16_params():
  params = {"w": jnp.ones((2,), jnp.bfloat16)}
  batch = {"x": jnp.ones((4, 2), jnp.bfloat16), "y": jnp.zeros((4,), jnp.bfloat16)}
  loss_fn = lambda p, b: (jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2), {})  # noqa: E731
  _, _, grads = opt_lib.accumulate_gradients(loss_fn, params, batch, 2)
  assert grads["w"].dtype == jnp.float32
  np.testing.assert_allclose(grads["w"], [4.0, 4.0])  # d/dw (2w)^2 at w=1, per input


def test_nonfinite_guard_skips_update_and_keeps_state():
  tx = opt_lib.make_optimizer(0.1, 10, 0.0, "constant", 1.0, 0.0)
  params = {"w": jnp.array([1.0, 2.0])}
  state = tx.init(params)
  guard = jax.jit(lambda g, s, p, l: opt_lib.nonfinite_guard(tx, g, s, p, l))
  good = {"w": jnp.array([0.5, -0.5])}
  new_p, new_s, finite = guard(good, state, params, jnp.array(1.0))
  ref_updates, ref_state = tx.update(good, state, params)
  assert bool(finite)
  np.testing.assert_allclose(new_p["w"], optax.apply_updates(params, ref_updates)["w"])
  for a, b in zip(jax.tree.leaves(new_s), jax.tree.leaves(ref_state)):
    np.testing.assert_array_equal(a, b)
  for grads, loss in [({"w": jnp.array([jnp.nan, 0.0])}, jnp.array(1.0)),
                      ({"w": jnp.array([jnp.inf, 0.0])}, jnp.array(1.0)),
                      (good, jnp.array(jnp.nan))]:
    p2, s2, finite = guard(grads, new_s, new_p, loss)
    assert not bool(finite)
    np.testing.assert_array_equal(p2["w"], new_p["w"])
    for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(new_s)):
      np.testing.assert_array_equal(a, b)


def test_nonfinite_streak_halts_after_limit():
  streak = opt_lib.NonfiniteStreak(limit=3, field="rl.max_nonfinite_steps")
  streak = streak.update(False, 1).update(False, 2).update(True, 3)
  assert streak.count == 0
  streak = streak.update(False, 4).update(False, 5)
  assert streak.count == 2
  with pytest.raises(FloatingPointError, match="rl.max_nonfinite_steps=3"):
    streak.update(False, 6)
