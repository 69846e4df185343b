"""rag_r1_jax entry point: `python main.py --config=configs/rag_r1.py[:variant] [--config.x.y=v]`.

Runs the configured stages (sft, rl, eval) in order under --workdir; each stage resumes from
its own checkpoints when they exist.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/rag_r1.py", "Config file, optionally with a variant: FILE:VARIANT.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config.name>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so --help and flag errors stay fast and JAX flags from the env apply.
  import jax
  from rag_r1_jax import config_validation, pipeline, sharding

  config = _CONFIG.value
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  print(f"rag_r1_jax: config {flags.FLAGS['config'].config_filename}\n{config}", flush=True)
  mesh = sharding.make_mesh(config.mesh)
  print(f"rag_r1_jax: {sharding.describe(mesh)}; jax {jax.__version__}; workdir {workdir}",
        flush=True)
  pipeline.run(config, mesh, workdir)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
