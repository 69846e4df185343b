"""Exact resume: N GRPO steps straight == N/2 steps in a process SIGKILLed after its checkpoint,
then N/2 more from that checkpoint (parameters, optimizer state, PRNG key and metrics)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from rag_r1_jax.training import checkpoints, train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from tests.training import test_update_common as h

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 4
# Two epochs of two shuffled minibatches per step: the minibatch order depends on state.rng.
CONFIG = dict(batch_size=4, mini_batch_size=2, epochs_per_batch=2, kl_coef=0.01,
              entropy_coef=0.001)


def fresh_state():
  return train_state.create_rl_state(h.model(h.mesh(2, 1, 1), seed=5), h.rl_config(**CONFIG))


def run_steps(state, start: int, stop: int):
  """Steps [start, stop) on the seeded batch of each step: (state, list of metrics)."""
  config, rows = h.rl_config(**CONFIG), []
  for step in range(start, stop):
    state, metrics = rl_trainer.rl_update(state, h.trajectory_batch(16, 24, 64, seed=100 + step),
                                         config)
    rows.append(h.without_timing(metrics))
  return state, rows


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from rag_r1_jax.training import checkpoints
    from tests.training import test_resume as t
    state, rows = t.run_steps(t.fresh_state(), 0, t.N // 2)
    mgr = checkpoints.CheckpointManager(sys.argv[1], keep=2)
    mgr.save(t.N // 2, state, {"step": t.N // 2, "metrics": rows})
    mgr.wait_until_finished()
    state, _ = t.run_steps(state, t.N // 2, t.N // 2 + 1)  # keeps training, then dies
    print("killing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _leaves(state):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(state)]


def test_resume_after_sigkill_is_exact(tmp_path):
  straight, straight_rows = run_steps(fresh_state(), 0, N)

  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9 and "killing" in proc.stdout, proc.stderr[-3000:]

  mgr = checkpoints.CheckpointManager(str(tmp_path), keep=2)
  assert mgr.latest_step() == N // 2
  target = fresh_state()
  restored, meta = mgr.restore(train_state.abstract(target))
  mgr.close()
  assert train_state.shardings(restored) == train_state.shardings(target)
  assert meta["metrics"] == json.loads(json.dumps(straight_rows[:N // 2]))
  resumed, resumed_rows = run_steps(restored, N // 2, N)

  assert resumed_rows == straight_rows[N // 2:]
  assert int(resumed.step) == int(straight.step) == N * 4
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
