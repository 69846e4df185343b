"""The SFT stage on a tiny model: non-finite runs halt without exporting; the final copy is atomic."""

import functools
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from configs import common
from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint
from rag_r1_jax.runs import sft_stage
from rag_r1_jax.runs.workspace import Workspace
from tests.training import test_update_common as h
from tests.training.sft.test_data import char_tokenizer
from tests.training.sft.test_step import CFG, _examples


@functools.cache
def _initial_split(mesh):
  return nnx.split(h.model(mesh, CFG))  # initialising compiles for seconds: once per module


class TinyWorkspace(Workspace):
  """A workspace whose policy is the tiny test decoder and whose tokenizer is per character."""

  @functools.cached_property
  def tokenizer(self):
    return char_tokenizer()

  def initial_model(self):
    graphdef, state = _initial_split(self.mesh)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), state))  # training donates it


def _run(tmp_path, monkeypatch, **sft):
  config = common.base_config()
  config.sft.update(dict(batch_size=1, learning_rate=1e-2, warmup_ratio=0.0, schedule="constant",
                         epochs=2, validation_fraction=0.2))
  config.sft.update(sft)
  config.sft.max_nonfinite_steps = 3
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  ws = TinyWorkspace(config, mesh, str(tmp_path))
  monkeypatch.setattr(sft_stage, "build_examples", lambda ws: _examples())
  return ws, lambda: sft_stage.run(config, mesh, str(tmp_path), workspace=ws)


def _exported(tmp_path) -> list[str]:
  return sorted(d for d in ("sft/model", "sft_best/model") if os.path.exists(tmp_path / d))


def test_a_streak_of_nonfinite_steps_halts_sft_without_an_export(tmp_path, monkeypatch):
  _, run = _run(tmp_path, monkeypatch, learning_rate=1e30)  # step 1 blows the weights up
  with pytest.raises(FloatingPointError, match=r"step 4: loss or gradients non-finite for 3 "
                     r"consecutive steps \(sft.max_nonfinite_steps=3\)"):
    run()
  assert _exported(tmp_path) == []


def test_a_nonfinite_policy_is_never_exported(tmp_path, monkeypatch):
  ws, run = _run(tmp_path, monkeypatch, learning_rate=1e30)
  ws.config.sft.max_nonfinite_steps = 1000
  with pytest.raises(FloatingPointError, match=r"sft: after epoch 1 the policy's validation loss "
                     r"is nan; it is not exported"):
    run()
  assert _exported(tmp_path) == []


class _Killed(BaseException):
  """Stands for SIGKILL in the middle of a copy."""


def test_the_final_copy_is_atomic_and_a_partial_one_is_redone(tmp_path, monkeypatch):
  ws, run = _run(tmp_path, monkeypatch, epochs=1)
  real_copytree = shutil.copytree

  def killed_while_writing_the_weights(src, dst, **kwargs):
    real_copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(os.path.join(src, "model.safetensors"), "rb") as f, \
        open(os.path.join(dst, "model.safetensors"), "wb") as out:
      out.write(f.read(1000))
    raise _Killed()

  monkeypatch.setattr(shutil, "copytree", killed_while_writing_the_weights)
  with pytest.raises(_Killed):
    run()
  monkeypatch.setattr(shutil, "copytree", real_copytree)
  assert _exported(tmp_path) == ["sft_best/model"]  # the copy never appears half written
  assert not ws.files.finished("sft")

  final = run()  # resumes after its last epoch: only the copy is left to do
  assert final == ws.files.model_dir("sft") and ws.files.finished("sft")
  assert not os.path.exists(final + ".partial")
  best, _ = hf_checkpoint.load_hf(ws.files.model_dir("sft_best"), ws.mesh)
  got, _ = hf_checkpoint.load_hf(final, ws.mesh)
  np.testing.assert_array_equal(np.asarray(got.embed[...]), np.asarray(best.embed[...]))

  # A directory an interrupted copy left in place (config.json beside truncated weights).
  weights = os.path.join(final, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) - 100)
  assert not ws.files.finished("sft")
  with pytest.raises(ValueError, match="truncated safetensors file"):
    hf_checkpoint.load_hf(final, ws.mesh)
  run()
  assert ws.files.finished("sft")
  got, _ = hf_checkpoint.load_hf(final, ws.mesh)
  np.testing.assert_array_equal(np.asarray(got.embed[...]), np.asarray(best.embed[...]))
