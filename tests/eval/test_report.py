"""The multi-run report: one row per run, recomputed from the JSONL, the paper's rows."""

import json
import os
import subprocess
import sys

import pytest

from rag_r1_jax.eval import report, summarize
from tests.eval import synthetic_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def two_runs(tmp_path):
  sq = synthetic_records.random_records(2, ("hotpotqa", "2wikimultihopqa"), per_dataset=20)
  mq = synthetic_records.random_records(3, ("nq", "hotpotqa"), per_dataset=20)
  dirs = [str(tmp_path / "sq"), str(tmp_path / "mq")]
  summarize.write_run(sq, dirs[0], run_name="RAG-R1-sq (ours)", plots=False)
  summarize.write_run(mq, dirs[1], plots=False)
  return dirs


def _row(text, name):
  line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))
  return line.strip("| ").split(" | ")[1:]


def test_runs_side_by_side(two_runs, capsys):
  assert report.main(two_runs + ["--metrics", "em,rounds"]) == 0
  text = capsys.readouterr().out
  em_table, rounds_table = text.split("\n\n")
  assert em_table.splitlines()[0] == "| run (EM) | NQ | HotpotQA | 2Wiki | avg |"
  sq = summarize.summarize(summarize.read_trajectories(two_runs[0]))
  mq = summarize.summarize(summarize.read_trajectories(two_runs[1]))
  fmt = summarize.format_value
  assert _row(em_table, "RAG-R1-sq (ours)") == [
      "-", fmt(sq["datasets"]["hotpotqa"]["em"], "rate"),
      fmt(sq["datasets"]["2wikimultihopqa"]["em"], "rate"), fmt(sq["avg"]["em"], "rate")]
  assert _row(em_table, "mq") == [
      fmt(mq["datasets"]["nq"]["em"], "rate"), fmt(mq["datasets"]["hotpotqa"]["em"], "rate"),
      "-", fmt(mq["avg"]["em"], "rate")]
  assert _row(rounds_table, "mq")[-1] == fmt(mq["avg"]["rounds"], "2f")
  assert "paper:" not in text


def test_numbers_come_from_the_jsonl_not_the_summary(two_runs):
  path = os.path.join(two_runs[1], summarize.SUMMARY_FILE)
  with open(path) as f:
    stale = json.load(f)
  stale["avg"]["em"] = 0.999
  with open(path, "w") as f:
    json.dump(stale, f)
  _, summary = report.load_run(two_runs[1])
  assert summary["avg"]["em"] != 0.999
  assert ".999" not in report.report(two_runs)


def test_paper_rows_and_out_file(two_runs, tmp_path, capsys):
  out = tmp_path / "report.md"
  assert report.main(two_runs + ["--paper", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert out.read_text() == text
  lines = text.splitlines()
  assert lines[0] == ("| run (EM) | NQ | PopQA | TriviaQA | HotpotQA | 2Wiki | MuSiQue | "
                      "Bamboogle | avg |")
  assert lines[2] == "| paper: Search-R1 | .387 | .422 | .531 | .377 | .351 | .135 | .376 | .368 |"
  assert lines[5] == "| paper: RAG-R1-mq | .423 | .479 | .608 | .495 | .556 | .192 | .432 | .455 |"
  assert _row(text, "mq")[1:3] == ["-", "-"]  # our run has no PopQA / TriviaQA
  assert len(lines) == 2 + 4 + 2


def test_paper_table3_avg_is_the_mean_of_its_columns():
  for values in report.PAPER_TABLE3.values():
    assert sum(values[:7]) / 7 == pytest.approx(values[7], abs=6e-4)


def test_errors(two_runs, tmp_path, capsys):
  assert report.main([str(tmp_path / "nothing")]) == 2
  assert "trajectories.jsonl not found" in capsys.readouterr().err
  assert report.main(two_runs + ["--metrics", "bleu"]) == 2
  assert "unknown metric 'bleu'" in capsys.readouterr().err
  with pytest.raises(ValueError, match="EM only"):
    report.runs_table([], "f1", paper=True)


def test_command_line_module(two_runs):
  result = subprocess.run([sys.executable, "-m", "rag_r1_jax.eval.report", *two_runs],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
  assert result.stdout.splitlines()[0] == "| run (EM) | NQ | HotpotQA | 2Wiki | avg |"
  assert len(result.stdout.splitlines()) == 4
