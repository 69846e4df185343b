"""The flashrag task on tiny files in each user format: Search-R1 parquet, FlashRAG jsonl under any
name, RAG-R1's JSON array; per-source grouping, bad rows by file and row, printed counts."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.common import base_config
from rag_r1_jax import tasks
from rag_r1_jax.data import qa_builders
from tests.data.test_qa_builders import write_jsonl

# Search-R1's 'base' template, shortened; the question follows its last "Question: ".
TEMPLATE = ("Answer the given question. ... call a search engine by <search> query </search> ... "
            "For example, <answer> Beijing </answer>. Question: {}\n")


def _search_r1_row(source, question, answers, index, split="train", keep_columns=True):
  row = {"data_source": source,
         "prompt": [{"role": "user", "content": TEMPLATE.format(question)}],
         "ability": "fact-reasoning",
         "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
         "extra_info": {"split": split, "index": index}}
  if keep_columns:  # datasets.map keeps FlashRAG's columns next to Search-R1's
    row.update(id=f"{split}_{index}", question=question, golden_answers=answers)
  return row


def _write_parquet(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)
  return str(path)


def _config(tmp_path, train="", evals=""):
  config = base_config()
  config.data.source = "flashrag"
  config.data.dir = str(tmp_path / "data")
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.data.train_datasets = train
  config.data.eval_datasets = evals
  return config


def test_search_r1_mixed_parquet_trains_and_evaluates_per_source(tmp_path, capsys):
  train = _write_parquet(tmp_path / "nq_hotpotqa_train" / "train.parquet", [
      _search_r1_row("nq", "who wrote hamlet?", ["Shakespeare"], 0),
      _search_r1_row("hotpotqa", "which is older, a or b?", ["a", "A."], 1),
      _search_r1_row("nq", "capital of france?", ["Paris"], 2, keep_columns=False)])
  _write_parquet(tmp_path / "nq_hotpotqa_train" / "test.parquet", [
      _search_r1_row("nq", "q0?", ["x"], 0, "test", keep_columns=False),
      _search_r1_row("triviaqa", "q1?", ["y"], 1, "test", keep_columns=False),
      _search_r1_row("nq", "q2?", ["z"], 2, "test", keep_columns=False)])
  config = _config(tmp_path, train=train, evals=str(tmp_path / "nq_hotpotqa_train"))
  rows = tasks.get(config).train_rows()
  assert rows == [
      {"id": "train_0", "question": "who wrote hamlet?", "golden_answers": ["Shakespeare"],
       "data_source": "nq", "extra_info": '{"index": 0, "split": "train"}'},
      {"id": "train_1", "question": "which is older, a or b?", "golden_answers": ["a", "A."],
       "data_source": "hotpotqa", "extra_info": '{"index": 1, "split": "train"}'},
      {"id": "train_2", "question": "capital of france?", "golden_answers": ["Paris"],
       "data_source": "nq", "extra_info": '{"index": 2, "split": "train"}'}]
  evals = tasks.get(config).eval_datasets()
  assert list(evals) == ["nq", "triviaqa"]
  assert [(r["id"], r["question"], r["golden_answers"]) for r in evals["nq"]] == [
      ("test_0", "q0?", ["x"]), ("test_2", "q2?", ["z"])]
  out = capsys.readouterr().out
  assert f"data: nq_hotpotqa_train train: 3 rows from {train} (nq 2, hotpotqa 1)" in out
  assert "data: nq_hotpotqa_train test: 3 rows from" in out and "(nq 2, triviaqa 1)" in out


def test_flashrag_jsonl_under_any_name_and_mixed_sets(tmp_path, capsys):
  data = tmp_path / "data"
  write_jsonl(data / "nq_search" / "train.jsonl",
               [{"id": i, "question": f"n{i}?", "golden_answers": [f"a{i}"]} for i in range(3)])
  write_jsonl(data / "nq_search" / "dev.jsonl",
               [{"id": "d0", "question": "nd?", "golden_answers": ["x"]}])
  write_jsonl(data / "my set" / "test.jsonl",
               [{"id": "t0", "question": "m?", "golden_answers": "only"}])
  config = _config(tmp_path, train="nq_search", evals="nq_search, my set")
  rows = tasks.get(config).train_rows()
  assert [(r["id"], r["data_source"]) for r in rows] == [("0", "nq_search"), ("1", "nq_search"),
                                                         ("2", "nq_search")]
  evals = tasks.get(config).eval_datasets()
  assert list(evals) == ["nq_search", "my set"]
  assert evals["my set"][0]["golden_answers"] == ["only"]
  out = capsys.readouterr().out
  assert "eval: nq_search has no test split; evaluating its dev split" in out
  assert "data: nq_search train: 3 rows from" in out


def test_rag_r1_rl_json_array_with_string_answers(tmp_path):
  path = tmp_path / "data" / "rl" / "train.json"
  os.makedirs(path.parent)
  path.write_text(json.dumps([{"question": "who?", "golden_answers": "Ann"},
                              {"id": 9, "question": "what?", "golden_answers": ["B", "b"]}],
                             indent=2))
  config = _config(tmp_path, train="rl")
  rows = tasks.get(config).train_rows()
  assert [(r["id"], r["question"], r["golden_answers"], r["data_source"]) for r in rows] == [
      ("train_0", "who?", ["Ann"], "rl"), ("9", "what?", ["B", "b"], "rl")]
  # a direct file path works too, as do both layouts side by side
  config.data.train_datasets = f"{path}, rl"
  assert len(tasks.get(config).train_rows()) == 4


def test_bad_rows_are_all_named_by_file_and_row(tmp_path):
  good = _search_r1_row("nq", "q?", ["a"], 0)
  path = _write_parquet(tmp_path / "bad" / "train.parquet", [
      good,
      dict(good, question=None, prompt=[{"role": "user", "content": "<answer> x </answer>"}]),
      dict(good, reward_model={"style": "rule", "ground_truth": {"target": []}}),
      good])
  config = _config(tmp_path, train=path)
  with pytest.raises(ValueError) as e:
    tasks.get(config).train_rows()
  assert str(e.value).splitlines() == [
      f"{path}: row 1: the user message looks like a Search-R1 template but has no "
      "'Question:' to take the question from",
      "(2 bad rows in all; no row was used):",
      f"  {path}: row 2: 'reward_model.ground_truth.target' must be a non-empty string or "
      "list of strings, got []"]
  jsonl = write_jsonl(tmp_path / "data" / "x" / "train.jsonl", [
      {"question": "q?", "golden_answers": ["a"]}, "{oops", "",
      {"question": "q?", "golden_answers": ["a"], "data_source": 3}])
  config = _config(tmp_path, train="x")
  with pytest.raises(ValueError, match=rf"^{jsonl}:2: bad JSON .*\n\(2 bad rows in all.*\n"
                                       rf"  {jsonl}:4: 'data_source' must be a non-empty"):
    tasks.get(config).train_rows()


def test_eval_sources_that_collide_and_missing_splits_are_refused(tmp_path):
  a = _write_parquet(tmp_path / "a.parquet", [_search_r1_row("nq", "q?", ["a"], 0)])
  b = _write_parquet(tmp_path / "b.parquet", [_search_r1_row("nq", "r?", ["b"], 0)])
  config = _config(tmp_path, evals=f"{a},{b}")
  with pytest.raises(ValueError, match="data_source 'nq' comes from both a and b"):
    tasks.get(config).eval_datasets()
  write_jsonl(tmp_path / "data" / "only_test" / "test.jsonl",
               [{"question": "q?", "golden_answers": ["a"]}])
  config = _config(tmp_path, train="only_test")
  with pytest.raises(FileNotFoundError, match=r"only_test: no train file \(\['test'\] only\)"):
    tasks.get(config).train_rows()
  config.data.train_datasets = " , "
  with pytest.raises(ValueError, match="config.data.train_datasets names no dataset"):
    tasks.get(config).train_rows()
  config.data.source = "wiki"
  with pytest.raises(ValueError, match=r"config.data.source='wiki'; valid: \['synthetic_world'"):
    tasks.get(config)


def test_resolve_spec_names_directories_and_files(tmp_path):
  data = tmp_path / "data"
  write_jsonl(data / "nq" / "test.jsonl", [])
  write_jsonl(data / "nq" / "test.parquet", [])
  with pytest.raises(ValueError, match="nq: both test.jsonl and test.parquet"):
    qa_builders.resolve_spec("nq", str(data))
  one = write_jsonl(tmp_path / "sets" / "popqa_small.jsonl", [])
  spec = qa_builders.resolve_spec(one, str(data))
  assert (spec.name, spec.single_file, spec.split_path("test")) == ("popqa_small", True, one)
  with pytest.raises(FileNotFoundError, match="dataset file .*/missing.parquet does not exist"):
    qa_builders.resolve_spec(str(tmp_path / "missing.parquet"), str(data))
