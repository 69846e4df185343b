"""experiments/diagnostics/drill_learning_curve.py: answer-token accuracy and a smoke-size run."""

import importlib.util
import os

import numpy as np
import pytest

from rag_r1_jax.training.sft.data import SFTExample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "drill_learning_curve",
    os.path.join(ROOT, "experiments", "diagnostics", "drill_learning_curve.py"))
curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curve)


def _example(tokens, first_target):
  tokens = np.asarray(tokens, np.int32)
  mask = np.zeros(len(tokens), np.float32)
  mask[first_target:] = 1.0
  return SFTExample(tokens, mask)


def test_answer_accuracy_reads_the_prediction_before_each_target():
  # Targets at positions 3..6 (<answer>, first, second, space); row 1 is one token longer.
  examples = [_example([1, 2, 3, 10, 11, 12, 13], 3), _example([1, 2, 3, 4, 10, 21, 22, 13], 4)]
  predicted = np.zeros((2, 8), np.int64)
  predicted[0, 2:6] = [10, 11, 99, 13]  # the second word wrong
  predicted[1, 3:7] = [10, 99, 22, 13]  # the first word wrong
  np.testing.assert_allclose(curve.answer_accuracy(examples, predicted), [1.0, 0.5, 0.5, 1.0])


def _smoke_lines(tmp_path, capsys, *extra):
  acc = curve.main(["--workdir", str(tmp_path), "--variant", "smoke", "--steps", "2",
                    "--every", "1", "--held_out", "8", *extra])
  assert acc.shape == (4,) and np.all((acc >= 0) & (acc <= 1))
  return capsys.readouterr().out.splitlines()


def test_runs_at_smoke_size_packed_and_padded(tmp_path, capsys):
  packed = _smoke_lines(tmp_path, capsys)
  assert any("8 x 256 packed tokens" in line for line in packed)
  assert [l.split()[1] for l in packed if l.startswith("step")] == ["1", "2"]
  assert os.path.isfile(tmp_path / "tokenizer" / "tokenizer.json")
  padded = _smoke_lines(tmp_path, capsys, "--pad", "100")  # more drills than packing makes
  assert any("100 padded drills" in line for line in padded)
  assert [l.split()[1] for l in padded if l.startswith("step")] == ["1", "2"]


def test_rejects_a_run_without_steps(tmp_path):
  with pytest.raises(SystemExit):
    curve.main(["--workdir", str(tmp_path), "--steps", "0"])
