"""Wall-clock timers that leave out the time JAX spends tracing and compiling.

A rollout that meets a new chunk width compiles the sampler's prefill for it; on the tiny
default config one compile costs as much as hundreds of questions, so seconds per question
that include it measure the bucket layout, not the method. JAX reports tracing, lowering and
backend compilation as duration events (jax.monitoring); a Stopwatch subtracts those that
happen inside its segments and keeps them apart in `compile_seconds`.

The same events tell a user what a long silent stretch is doing: `announce` prints a line
before a preparation step and its wall and compile seconds after it; `compiling` wraps a call
of a jitted function and prints "compiling NAME for SHAPE ..." before the first call of each
shape and the seconds its compilation took after it. Lines go to stdout above any tqdm bar, from
process 0 of a multi-process run only.
"""

import contextlib
import sys
import threading
import time

import tqdm
from jax import monitoring

from rag_r1_jax import multihost

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


def say(text: str) -> None:
  """One progress line on stdout, above any tqdm bar; nothing on processes other than 0."""
  if multihost.is_primary():
    tqdm.tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def _seconds(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


@contextlib.contextmanager
def announce(what: str):
  """Prints "{what} ..." before the block and "{what}: done in 12.3 s (compile 4.1 s)" after
  it, for a preparation step that would otherwise pass in silence."""
  say(f"{what} ...")
  start, compiled = time.perf_counter(), compile_seconds()
  yield
  spent = compile_seconds() - compiled
  extra = f" (compile {_seconds(spent)})" if spent >= 0.05 else ""
  say(f"{what}: done in {_seconds(time.perf_counter() - start)}{extra}")


_announced: set[tuple[str, str]] = set()


@contextlib.contextmanager
def compiling(name: str, shape: str):
  """Around a call of jitted `name` at `shape` (the part of its arguments that picks its
  compilation, in words: "[16, 768]"). Before the first call at a shape: "compiling {name} for
  {shape} ..."; after it, and after a later call that compiled for over a second: "{name} for
  {shape}: compiled in 41.2 s"."""
  key = (name, shape)
  first = key not in _announced
  if first:
    _announced.add(key)
    say(f"compiling {name} for {shape} ...")
  compiled = compile_seconds()
  yield
  spent = compile_seconds() - compiled
  if first or spent >= 1.0:
    say(f"{name} for {shape}: compiled in {_seconds(spent)}")
