"""Checkpoints: bit-exact round trip, resharding, keep-N, and crashes in the middle of a save."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rag_r1_jax.training import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
            "emb": jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)}
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)
  return {"params": params, "opt_state": opt_state,
          "ref_params": {"w": params["w"] * 2},
          "rng": jax.random.key(seed + 7),
          "legacy_rng": jax.random.PRNGKey(seed + 3)}


def _assert_bit_exact(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_bit_exact_with_keys_and_optax_state(tmp_path):
  state = _state()
  meta = {"step": 5, "data_position": np.int64(1280), "config": {"rl": {"kl_coef": 0.001}},
          "metrics": {"reward": np.float32(0.5)}}
  with checkpoints.CheckpointManager(str(tmp_path), keep=3) as mgr:
    mgr.save(5, state, meta)
    mgr.wait_until_finished()
    assert mgr.all_steps() == [5] and mgr.latest_step() == 5
  mgr = checkpoints.CheckpointManager(str(tmp_path), keep=3)
  target = jax.eval_shape(lambda: _state())
  restored, got_meta = mgr.restore(target)
  _assert_bit_exact(restored, state)
  assert got_meta == {"step": 5, "data_position": 1280, "config": {"rl": {"kl_coef": 0.001}},
                      "metrics": {"reward": 0.5}}
  assert mgr.restore_meta(5) == got_meta
  # The restored typed key draws the same numbers as the original.
  np.testing.assert_array_equal(jax.random.uniform(restored["rng"], (3,)),
                                jax.random.uniform(state["rng"], (3,)))
  mgr.close()


def test_restore_onto_given_shardings(tmp_path):
  devices = np.array(jax.devices()[:8])
  mesh8 = Mesh(devices, ("data",))
  x = jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8),
                     NamedSharding(mesh8, P("data", None)))
  key = jax.device_put(jax.random.key(1), NamedSharding(mesh8, P()))
  with checkpoints.CheckpointManager(str(tmp_path)) as mgr:
    mgr.save(1, {"x": x, "key": key}, {})
  mesh4 = Mesh(devices[:4].reshape(2, 2), ("a", "b"))
  target = {"x": jax.ShapeDtypeStruct((8, 8), jnp.float32,
                                      sharding=NamedSharding(mesh4, P("b", "a"))),
            "key": jax.ShapeDtypeStruct((), key.dtype, sharding=NamedSharding(mesh4, P()))}
  restored, _ = checkpoints.CheckpointManager(str(tmp_path)).restore(target, step=1)
  assert restored["x"].sharding == target["x"].sharding
  np.testing.assert_array_equal(restored["x"], np.arange(64).reshape(8, 8))
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(jax.random.key(1)))


def test_keep_n_and_missing_steps(tmp_path):
  small = {"a": jnp.zeros((2,))}
  with checkpoints.CheckpointManager(str(tmp_path), keep=2) as mgr:
    for step in range(1, 6):
      mgr.save(step, {"a": jnp.full((2,), float(step))}, {"step": step})
    mgr.wait_until_finished()
    assert mgr.all_steps() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]
    state, meta = mgr.restore(small)
    assert meta["step"] == 5 and float(state["a"][0]) == 5.0
    with pytest.raises(FileNotFoundError, match="step 2"):
      mgr.restore(small, step=2)
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    checkpoints.CheckpointManager(str(tmp_path / "empty")).restore(small)
  with pytest.raises(TypeError, match="not JSON"):
    checkpoints.CheckpointManager(str(tmp_path / "x")).save(1, small, {"bad": object()})


def test_unfinalised_tmp_dir_is_ignored(tmp_path):
  with checkpoints.CheckpointManager(str(tmp_path)) as mgr:
    mgr.save(3, {"a": jnp.ones((4,))}, {"step": 3})
  # A save of step 7 that died before orbax renamed its tmp dir: half of the files.
  partial = tmp_path / "7.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "3", partial)
  shutil.rmtree(partial / "state")
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  assert mgr.latest_step() == 3 and mgr.all_steps() == [3]
  state, meta = mgr.restore({"a": jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert meta == {"step": 3}
  np.testing.assert_array_equal(state["a"], np.ones(4))
  mgr.close()


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    import jax.numpy as jnp
    from rag_r1_jax.training import checkpoints
    directory = sys.argv[1]
    mgr = checkpoints.CheckpointManager(directory, keep=3)
    mgr.save(1, {"a": jnp.full((16,), 1.0)}, {"step": 1})
    mgr.wait_until_finished()
    mgr.save(2, {"a": jnp.full((16_000_000,), 2.0)}, {"step": 2})  # 64 MB, async
    deadline = time.time() + 30
    while not any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory)):
      assert time.time() < deadline
      time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)  # dies while step 2 is being written
""")


def test_sigkill_during_async_save_keeps_previous_checkpoint(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert "2.orbax-checkpoint-tmp" in os.listdir(tmp_path) and "2" not in os.listdir(tmp_path)
  mgr = checkpoints.CheckpointManager(str(tmp_path), keep=3)
  assert mgr.latest_step() == 1
  state, meta = mgr.restore({"a": jax.ShapeDtypeStruct((16,), jnp.float32)})
  assert meta == {"step": 1}
  np.testing.assert_array_equal(state["a"], np.ones(16))
  # Resuming overwrites the abandoned step.
  mgr.save(2, {"a": jnp.full((16,), 2.0)}, {"step": 2})
  mgr.wait_until_finished()
  assert mgr.all_steps() == [1, 2]
  assert mgr.restore_meta() == {"step": 2}
  mgr.close()
