"""rag_r1_jax entry point: `python main.py --config=configs/rag_r1.py[:variant] [--config.x.y=v]`.

Runs the configured stages (sft, rl, eval) in order under --workdir; each stage resumes from
its own checkpoints when they exist. Before anything loads, every path the configured stages
read is checked and all missing ones are named with their fields (rag_r1_jax/config_paths.py).

Several processes (hosts) run one pipeline over all their devices when each is started with
the same --coordinator_address=HOST:PORT and --num_processes=N and its own --process_id (or
with --auto_distributed on a cluster JAX detects: Cloud TPU pod, SLURM, Open MPI); the
--workdir must be a directory every process sees (rag_r1_jax/multihost.py).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/rag_r1.py", "Config file, optionally with a variant: FILE:VARIANT.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config.name>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process run: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-process run: how many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-process run: this process's index, 0 .. N-1.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "Multi-process run: the local devices this process uses "
    "(default: all), e.g. one GPU per process.")
flags.register_validator("local_device_ids",
                         lambda ids: ids is None or all(i.isdigit() for i in ids),
                         "--local_device_ids must be comma-separated device indices")
_AUTO_DISTRIBUTED = flags.DEFINE_bool(
    "auto_distributed", False, "Multi-process run whose unset flags JAX detects from the "
    "cluster (Cloud TPU pod, SLURM, Open MPI).")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Run nothing: compile the configured stages' steps (SFT step, RL scoring "
    "and update, rollout decode) for the mesh with abstract weights and print each one's "
    "per-device memory (rag_r1_jax/dry_run.py). Exits 1 if a part does not fit.")
_DEVICE_MEMORY_GB = flags.DEFINE_float(
    "device_memory_gb", None, "Dry run: the per-device memory (GiB) each part must fit in "
    "(default: what the device reports, if it does).")


def _unknown_field_message(error: Exception, argv: list[str]) -> str | None:
  """One line naming the --config.* override whose field the config does not declare (None
  when no override names the missing field: then the error is the config file's own)."""
  text = str(error).replace("\\", "")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  hint = f"; did you mean {hint.group(1)!r}?" if hint else ""
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    for depth, field in enumerate(path):
      if f"'{field}'" in text:
        parent = ".".join(["config", *path[:depth]])
        return (f"main.py: {arg}: {parent} has no field {field!r}{hint} (every field is "
                "declared in configs/common.py)")
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an override of an undeclared config field exits 2 with one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    message = _unknown_field_message(e, argv)
    if message is None:
      raise
    print(message, file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so --help and flag errors stay fast and JAX flags from the env apply.
  import jax
  import numpy as np
  from rag_r1_jax import config_paths, config_validation, multihost, pipeline, sharding

  try:  # before anything touches a device
    local_ids = [int(i) for i in _LOCAL_DEVICE_IDS.value] if _LOCAL_DEVICE_IDS.value else None
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         local_ids, auto=_AUTO_DISTRIBUTED.value)
  except ValueError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  config = _CONFIG.value
  try:
    config_validation.validate(config)
    if not _DRY_RUN.value:  # a dry run sizes the run from the config alone
      config_paths.validate_paths(config)
  except config_validation.ConfigError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  try:
    multihost.check_same({"workdir": np.frombuffer(os.path.abspath(workdir).encode(), np.uint8)},
                         "--workdir (one directory every process sees)")
  except ValueError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  print(f"rag_r1_jax: config {flags.FLAGS['config'].config_filename}\n{config}", flush=True)
  try:
    mesh = sharding.make_mesh(config.mesh)
    config_validation.validate_mesh(config, mesh.shape)
  except ValueError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  print(f"rag_r1_jax: {sharding.describe(mesh)}; process {jax.process_index()} of "
        f"{jax.process_count()}; jax {jax.__version__}; workdir {workdir}", flush=True)
  if _DRY_RUN.value:
    from rag_r1_jax import dry_run
    sys.exit(dry_run.main(config, mesh, _DEVICE_MEMORY_GB.value))
  pipeline.run(config, mesh, workdir)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
