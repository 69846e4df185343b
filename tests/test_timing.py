"""Stopwatches leave JAX compilation out of wall-clock seconds."""

import time

import jax
import jax.numpy as jnp

from rag_r1_jax import timing


def test_stopwatch_separates_compilation_from_run_time():
  @jax.jit
  def f(x):
    for _ in range(30):  # enough ops that tracing + compiling takes measurable time
      x = jnp.sin(x) @ x.T
    return x

  x = jnp.ones((8, 8))
  first, second = timing.Stopwatch(), timing.Stopwatch()
  start = time.perf_counter()
  with first():
    jax.block_until_ready(f(x))
  wall = time.perf_counter() - start
  with second():
    jax.block_until_ready(f(x))
  assert first.compile_seconds > 0.01
  assert abs(first.seconds + first.compile_seconds - wall) < 0.05 * wall + 1e-3
  assert second.compile_seconds == 0.0  # cached: nothing compiled
  with first():  # segments add up
    time.sleep(0.02)
  assert first.seconds >= 0.02
