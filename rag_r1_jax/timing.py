"""Wall-clock timers that leave out the time JAX spends tracing and compiling.

A rollout that meets a new chunk width compiles the sampler's prefill for it; on the tiny
default config one compile costs as much as hundreds of questions, so seconds per question
that include it measure the bucket layout, not the method. JAX reports tracing, lowering and
backend compilation as duration events (jax.monitoring); a Stopwatch subtracts those that
happen inside its segments and keeps them apart in `compile_seconds`.
"""

import contextlib
import threading
import time

from jax import monitoring

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

_lock = threading.Lock()
_compile_seconds = 0.0
_listening = False


def _on_duration(event: str, duration_secs: float, **_) -> None:
  global _compile_seconds
  if event in COMPILE_EVENTS:
    with _lock:
      _compile_seconds += duration_secs


def compile_seconds() -> float:
  """Seconds this process has spent tracing and compiling since the first call here."""
  global _listening
  with _lock:
    if not _listening:
      monitoring.register_event_duration_secs_listener(_on_duration)
      _listening = True
    return _compile_seconds


class Stopwatch:
  """Sums the wall seconds of `with watch():` segments, less compilation inside them."""

  def __init__(self):
    self.seconds = 0.0  # wall time of the segments without compilation
    self.compile_seconds = 0.0  # tracing + compilation inside the segments

  @contextlib.contextmanager
  def __call__(self):
    start, compiled = time.perf_counter(), compile_seconds()
    try:
      yield self
    finally:
      spent = compile_seconds() - compiled
      self.compile_seconds += spent
      self.seconds += max(0.0, time.perf_counter() - start - spent)
