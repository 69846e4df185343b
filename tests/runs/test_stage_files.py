"""Stage files: an export read back by the diagnostics' loader."""

import pytest

from rag_r1_jax.runs.stage_files import load_exported_policy
from tests.runs.test_workspace import workspace


def test_load_exported_policy_reads_back_a_stage_export(tmp_path):
  import numpy as np
  ws = workspace(tmp_path)
  with pytest.raises(FileNotFoundError, match="did the sft stage finish"):
    load_exported_policy(str(tmp_path), "sft")
  model = ws.initial_model()
  ws.files.export_model("sft", model)
  tokenizer, loaded, model_dir = load_exported_policy(str(tmp_path), "sft")
  assert model_dir == ws.files.model_dir("sft")
  assert tokenizer.get_vocab() == ws.tokenizer.get_vocab()
  np.testing.assert_array_equal(np.asarray(loaded.embed[...]), np.asarray(model.embed[...]))
