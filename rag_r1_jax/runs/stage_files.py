"""Where a run's stages keep their outputs under the workdir: each stage's exported policy
(`<workdir>/<stage>/model`, a Hugging Face directory written atomically) and its orbax
checkpoints (`<workdir>/<stage>/checkpoints`)."""

import os
import shutil
from typing import Any, Callable

from jax.sharding import Mesh

from rag_r1_jax import multihost, timing
from rag_r1_jax.models import factory, hf_checkpoint
from rag_r1_jax.models.decoder import Decoder


def write_dir_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) on a fresh `path.partial`, then renames it to `path` (replacing it).

  `path` is at every moment absent or whole: the old one is moved aside before the rename and
  deleted after it, and a `.partial` left by an interrupted call is discarded by the next one.
  """
  tmp, old = path + ".partial", path + ".old"
  shutil.rmtree(tmp, ignore_errors=True)
  write(tmp)
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)


def load_exported_policy(run_dir: str, stage: str):
  """(tokenizer, model, model_dir) of a finished run's `<run_dir>/<stage>/model`, on one device.

  For diagnostics that read a run after the fact (experiments/diagnostics/).
  """
  import jax
  from ml_collections import ConfigDict
  from rag_r1_jax import sharding
  model_dir = os.path.join(run_dir, stage, "model")
  if not os.path.isfile(os.path.join(model_dir, "config.json")):
    raise FileNotFoundError(f"no exported policy at {model_dir}: did the {stage} stage finish?")
  tokenizer = factory.load_tokenizer(os.path.join(run_dir, "tokenizer"))
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  model, _ = hf_checkpoint.load_hf(model_dir, mesh)
  return tokenizer, model, model_dir


class StageFiles:
  """One run's stage outputs; `tokenizer()` gives the tokenizer exports are written with."""

  def __init__(self, config, mesh: Mesh, workdir: str, tokenizer: Callable[[], Any]):
    self.config = config
    self.mesh = mesh
    self.workdir = workdir
    self._tokenizer = tokenizer

  def model_dir(self, stage: str) -> str:
    """Where a stage exports its final policy as a Hugging Face directory."""
    return os.path.join(self.workdir, stage, "model")

  def finished(self, stage: str) -> bool:
    """Whether the stage exported its final policy whole (exports are atomic renames; a
    directory an interrupted write left incomplete does not count, so the stage redoes it)."""
    path = self.model_dir(stage)
    if not os.path.isdir(path):
      return False
    if hf_checkpoint.is_complete_export(path):
      return True
    print(f"{stage}: {path} is incomplete (an interrupted export or copy); redoing it",
          flush=True)
    return False

  def load_model(self, stage: str) -> Decoder | None:
    """The policy a finished stage exported, or None if it has not finished."""
    path = self.model_dir(stage)
    if not self.finished(stage):
      return None
    runtime = factory.runtime_overrides(self.config.model)
    model, _ = hf_checkpoint.load_hf(path, self.mesh, **runtime)
    return model

  def export_model(self, stage: str, model: Decoder) -> str:
    """Writes `model` (with the tokenizer) as the stage's Hugging Face directory, atomically.

    Every process takes part (the parameters are gathered from all); process 0 writes."""
    path = self.model_dir(stage)
    def export(tmp):
      hf_checkpoint.export_hf(model, tmp, tokenizer=self._tokenizer(),
                              dtype=self.config.export.dtype)
    with timing.announce(f"{stage}: exporting the policy to {path}"):
      if multihost.is_primary():
        write_dir_atomically(path, export)
      else:
        export(path + ".partial")  # gathers the parameters with process 0, writes nothing
      multihost.barrier(f"export {stage}")
    return path

  def copy_model(self, source_stage: str, stage: str) -> str:
    """Copies one stage's exported policy to another stage's directory, atomically."""
    source, path = self.model_dir(source_stage), self.model_dir(stage)
    if multihost.is_primary():
      write_dir_atomically(path, lambda tmp: shutil.copytree(source, tmp))
    multihost.barrier(f"copy {source_stage} to {stage}")
    return path

  def checkpoint_manager(self, stage: str):
    """The stage's orbax checkpoints under <workdir>/<stage>/checkpoints."""
    from rag_r1_jax.training import checkpoints
    return checkpoints.CheckpointManager(os.path.join(self.workdir, stage, "checkpoints"),
                                         keep=self.config.checkpoint.keep,
                                         async_save=self.config.checkpoint.async_save)
