"""main.py end to end at the smoke size: SFT -> GRPO -> eval; the quickstart notebook reruns it
(resuming, not retraining); an interrupted RL stage resumes from its checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from rag_r1_jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(workdir, *overrides, timeout=900):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", "--config=configs/rag_r1.py:smoke",
                         f"--workdir={workdir}", *overrides], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  result = _main(workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, result


@pytest.mark.slow
def test_every_stage_wrote_its_outputs(smoke_run):
  workdir, result = smoke_run
  for stage in ("sft", "rl"):
    assert os.path.isfile(os.path.join(workdir, stage, "model", "config.json"))
    assert os.path.isfile(os.path.join(workdir, stage, "model", "tokenizer.json"))
  with open(os.path.join(workdir, "metrics", "rl.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2]
  for key in ("reward", "em", "kl", "entropy", "grad_norm", "rollout_seconds", "searches_per_question"):
    assert key in rows[0], key
  for row in rows:  # smoke rolls out 6 questions (rl.oversample=1.5) and trains on 4 groups
    assert row["trained_mixed_groups"] >= row["mixed_groups"], row  # mixed groups go first
  with open(os.path.join(workdir, "metrics", "sft.jsonl")) as f:
    sft_rows = [json.loads(line) for line in f]
  assert any("validation_loss" in r for r in sft_rows)
  for stage in ("sft", "rl"):
    with open(os.path.join(workdir, "eval", stage, "trajectories.jsonl")) as f:
      assert sum(1 for _ in f) == 4 * 8  # four question kinds, eval.max_questions=8
  with open(os.path.join(workdir, "eval", "report.md")) as f:
    report = f.read()
  assert "rag_r1_smoke:sft" in report and "rag_r1_smoke:rl" in report
  assert "== EM by dataset ==" in result.stdout
  with open(os.path.join(workdir, "metrics", "stages.jsonl")) as f:
    stages = [json.loads(line) for line in f][:3]  # a later test's rerun appends rows
  assert [r["stage"] for r in stages] == ["sft", "rl", "eval"]
  assert all(r["seconds"] > r["compile_seconds"] > 0 for r in stages), stages
  assert "rag_r1_jax: stage times: sft " in result.stdout


def test_stage_times_are_printed_in_minutes_and_seconds():
  assert pipeline.format_seconds(42.04) == "42.0s"
  assert pipeline.format_seconds(725.4) == "12m05s"
  assert pipeline.format_seconds(3725) == "1h02m05s"
  rows = [{"stage": "sft", "seconds": 662.2, "compile_seconds": 21.3},
          {"stage": "rl", "seconds": 450.0, "compile_seconds": 40.14}]
  assert pipeline.timing_line(rows) == (
      "stage times: sft 11m02s (compile 21.3s) | rl 7m30s (compile 40.1s) | total 18m32s")


@pytest.mark.slow
def test_quickstart_notebook_reruns_the_finished_run_without_retraining(smoke_run, monkeypatch):
  """The Colab quickstart executes end to end (nbclient) on the smoke run's workdir: its
  main.py call resumes SFT and RL as finished instead of retraining, re-evaluates, and the
  notebook plots the metrics and shows the report."""
  import nbformat
  from nbclient import NotebookClient
  workdir, _ = smoke_run
  monkeypatch.setenv("RAG_R1_VARIANT", "smoke")
  monkeypatch.setenv("RAG_R1_WORKDIR", workdir)
  monkeypatch.setenv("RAG_R1_SKIP_INSTALL", "1")  # CI installed the requirements already
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  path = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  printed = "".join(str(o.get("text", "")) for o in outputs)
  assert "sft: finished earlier" in printed and "rl: finished earlier" in printed
  shown = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
  assert "EM" in shown and "rag_r1_smoke:rl" in shown  # the results table was displayed
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the metrics plot
  with open(os.path.join(workdir, "metrics", "stages.jsonl")) as f:
    stages = [json.loads(line)["stage"] for line in f]
  assert stages == ["sft", "rl", "eval", "sft", "rl", "eval"]  # appended: the first run's times stay


@pytest.mark.slow
def test_interrupted_rl_resumes_from_checkpoint(smoke_run, tmp_path):
  """The RL stage killed after its first checkpoint continues from it, not from scratch."""
  import shutil
  workdir, _ = smoke_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "rl", "model"))  # as if the run died before the export
  ckpts = os.path.join(copy, "rl", "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps == [1, 2]
  shutil.rmtree(os.path.join(ckpts, "2"))
  result = _main(copy, "--config.stages=rl")
  assert result.returncode == 0, result.stderr[-4000:]
  assert "rl: resumed from step 1" in result.stdout
  with open(os.path.join(copy, "metrics", "rl.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]
  with open(os.path.join(workdir, "metrics", "rl.jsonl")) as f:
    original = [json.loads(line) for line in f]
  with open(os.path.join(copy, "metrics", "rl.jsonl")) as f:
    resumed = [json.loads(line) for line in f]
  # Step 2 replays exactly: same rollout seed, same restored state and data position.
  for key in ("reward", "response_tokens", "loss"):
    assert resumed[1][key] == pytest.approx(original[1][key], rel=1e-6, abs=1e-9), key
