"""Scoring and per-dataset aggregation of trajectories; the run files and their consistency."""

import json
import os

import numpy as np
import pytest

from rag_r1_jax.eval import answer_metrics, summarize
from tests.eval import synthetic_records


def test_hand_worked_metrics():
  summary = summarize.summarize([summarize.score_record(r)
                                 for r in synthetic_records.hand_records()])
  assert list(summary["datasets"]) == ["nq", "hotpotqa"]  # the paper's column order
  nq, hp, avg = summary["datasets"]["nq"], summary["datasets"]["hotpotqa"], summary["avg"]
  expected_nq = {"em": .5, "f1": .5, "cover_em": .5, "answer_rate": .5, "rounds": 1.0,
                 "queries_per_round": 2.0, "generated_tokens": 75.0, "seconds": 1.25,
                 "decode_seconds": .7, "retrieval_seconds": .25, "other_seconds": .3,
                 "questions": 2}
  # "the Beatles band" vs "Beatles": EM 0, F1 2/3 (P 1/2, R 1), covered.
  expected_hp = {"em": 0.0, "f1": 2 / 3, "cover_em": 1.0, "answer_rate": 1.0, "rounds": 1.0,
                 "queries_per_round": 2.0, "generated_tokens": 30.0, "seconds": .6,
                 "decode_seconds": .2, "retrieval_seconds": .3, "other_seconds": .1,
                 "questions": 1}
  assert nq == pytest.approx(expected_nq)
  assert hp == pytest.approx(expected_hp)
  assert avg["em"] == pytest.approx(.25)
  assert avg["f1"] == pytest.approx((.5 + 2 / 3) / 2)
  assert avg["cover_em"] == pytest.approx(.75)
  assert avg["questions"] == 3
  assert summary["finish_reasons"] == {"answer": 2, "length": 1}


def test_markdown_table_layout():
  summary = summarize.summarize([summarize.score_record(r)
                                 for r in synthetic_records.hand_records()])
  lines = summarize.markdown_table(summary, title="mq").splitlines()
  assert lines[0] == "| mq | NQ | HotpotQA | avg |"
  assert lines[1] == "|---|---|---|---|"
  assert "| EM | .500 | .000 | .250 |" in lines
  assert "| F1 | .500 | .667 | .583 |" in lines
  assert "| queries / round | 2.00 | 2.00 | 2.00 |" in lines
  assert "| - other | 0.3000 | 0.1000 | 0.2000 |" in lines  # ms resolution: CPU runs are fast
  assert "| questions | 2 | 1 | 3 |" in lines
  assert len(lines) == 2 + len(summarize.METRICS)


def test_no_search_means_no_queries_per_round():
  records = [dict(r, turns=0, queries_per_turn=[]) for r in synthetic_records.hand_records()]
  summary = summarize.summarize([summarize.score_record(r) for r in records])
  assert summary["datasets"]["nq"]["queries_per_round"] is None
  assert summary["avg"]["queries_per_round"] is None
  assert "| queries / round | - | - | - |" in summarize.markdown_table(summary)


def test_bad_records_are_named():
  record = synthetic_records.hand_records()[0]
  with pytest.raises(ValueError, match=r"'n0' lacks fields \['turns'\]"):
    summarize.score_record({k: v for k, v in record.items() if k != "turns"})
  with pytest.raises(ValueError, match="'n0': turns=3 but queries_per_turn has 2"):
    summarize.score_record(dict(record, turns=3))
  with pytest.raises(ValueError, match="no trajectories"):
    summarize.summarize([])


def test_format_value():
  assert summarize.format_value(0.4551, "rate") == ".455"
  assert summarize.format_value(1.0, "rate") == "1.000"
  assert summarize.format_value(None, "rate") == "-"
  assert summarize.format_value(2.346, "2f") == "2.35"
  assert summarize.format_value(7.0, "int") == "7"


def test_run_files_match_a_recomputation_from_the_jsonl(tmp_path):
  datasets = ("bamboogle", "hotpotqa", "2wikimultihopqa", "custom")
  records = synthetic_records.random_records(0, datasets, per_dataset=25)
  table = summarize.write_run(records, str(tmp_path / "run"), run_name="mq", plots=False)
  run = tmp_path / "run"
  assert sorted(os.listdir(run)) == ["results.md", "summary.json", "trajectories.jsonl"]
  assert (run / "results.md").read_text() == table
  rows = summarize.read_trajectories(str(run))
  assert len(rows) == 100 and rows[0]["id"] == "bamboogle_0"
  with open(run / "summary.json") as f:
    summary = json.load(f)
  assert summary["run"] == "mq"
  assert list(summary["datasets"]) == ["hotpotqa", "2wikimultihopqa", "bamboogle", "custom"]
  ems = []
  for name in datasets:
    mine = [r for r in rows if r["dataset"] == name]
    for r in mine:  # the stored scores are those of the answer metrics
      assert r["em"] == answer_metrics.exact_match(r["answer"], r["golden_answers"])
      assert r["f1"] == answer_metrics.f1(r["answer"], r["golden_answers"])
    got = summary["datasets"][name]
    em = np.mean([r["em"] for r in mine])
    ems.append(em)
    assert got["em"] == pytest.approx(em)
    assert got["cover_em"] == pytest.approx(np.mean([r["cover_em"] for r in mine]))
    assert got["answer_rate"] == pytest.approx(np.mean([r["answer"] is not None for r in mine]))
    assert got["rounds"] == pytest.approx(np.mean([r["turns"] for r in mine]))
    assert got["queries_per_round"] == pytest.approx(
        sum(sum(r["queries_per_turn"]) for r in mine) / sum(r["turns"] for r in mine))
    assert got["other_seconds"] == pytest.approx(np.mean(
        [r["total_seconds"] - r["decode_seconds"] - r["retrieval_seconds"] for r in mine]))
  assert summary["avg"]["em"] == pytest.approx(np.mean(ems))
  em_row = next(line for line in table.splitlines() if line.startswith("| EM |"))
  assert em_row.split(" | ")[-1].rstrip(" |") == summarize.format_value(np.mean(ems), "rate")
  # 'the Paris' normalises to 'paris': some EM, and 'Paris France' adds cover-EM only.
  assert 0 < summary["avg"]["em"] < summary["avg"]["cover_em"] < 1
