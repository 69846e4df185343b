"""Test setup: 8 fake CPU devices (set before JAX is imported) and asset helpers."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ["JAX_PLATFORMS"] != "cpu":
  # GPUs and TPUs multiply float32 matrices in reduced precision by default (TF32, bf16
  # passes); the parity tests compare with float32 references at CPU tolerances.
  os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from rag_r1_jax import assets  # noqa: E402


def require_asset(name: str) -> str:
  """The asset's path; fails (not skips) on CI, where the assets are always installed."""
  try:
    return assets.asset_path(name)
  except assets.AssetNotInstalledError as e:
    if os.environ.get("CI"):
      raise
    pytest.skip(str(e))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
  """Drops JAX's compiled executables after each test module.

  The suite compiles thousands of functions in one process; kept, they grow it by gigabytes,
  and late in a full run XLA:CPU aborted while compiling (a memory-hungry test passed alone).
  A module's functions are rarely reused by the next module; those that are recompile, and
  their compile announcements (rag_r1_jax/timing.py) are made again, as in a fresh process.
  """
  yield
  import gc

  import jax

  from rag_r1_jax import timing
  jax.clear_caches()
  timing._announced.clear()
  gc.collect()


def pytest_terminal_summary(terminalreporter):
  """Peak resident memory of the test process and of its largest finished child (an xdist
  worker, a multi-process test's process), for CI logs."""
  import resource
  gib = lambda who: resource.getrusage(who).ru_maxrss / 2**20  # noqa: E731  (KiB -> GiB)
  terminalreporter.write_line(
      f"peak resident memory: this process {gib(resource.RUSAGE_SELF):.1f} GiB, its largest "
      f"finished child {gib(resource.RUSAGE_CHILDREN):.1f} GiB")
