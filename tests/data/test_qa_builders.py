"""tfds builders on small files written here: counts, fields, order, caching, file:line errors."""

import json
import os
import sys

import pytest

from rag_r1_jax.data import iterator, qa_builders


def write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return str(path)


def _qa_rows(name, split, n):
  return [{"id": f"{split}_{i}", "question": f"{name} question {i} é?",
           "golden_answers": [f"{name}-{i}", f"alt {i}"][:1 + i % 2]} for i in range(n)]


def _read(name, split, n):
  """_qa_rows as they read back: the dataset's name as data_source, no extra_info."""
  return [dict(r, data_source=name, extra_info="") for r in _qa_rows(name, split, n)]


@pytest.fixture(scope="module")
def flashrag_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("flashrag")
  for k, name in enumerate(qa_builders.QA_DATASETS):
    write_jsonl(root / name / "test.jsonl", _qa_rows(name, "test", 3 + k))
    if name in ("nq", "hotpotqa", "rl"):
      write_jsonl(root / name / "train.jsonl", _qa_rows(name, "train", 5))
      write_jsonl(root / name / "dev.jsonl", _qa_rows(name, "dev", 2))
  return str(root)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_every_qa_dataset_builds_and_reads_back(flashrag_dir, tfds_dir):
  for k, name in enumerate(qa_builders.QA_DATASETS):
    records = qa_builders.load_split(name, "test", flashrag_dir, tfds_dir)
    assert len(records) == 3 + k
    assert list(records) == _read(name, "test", 3 + k)  # file order, decoded to str
  train = qa_builders.load_split("hotpotqa", "train", flashrag_dir, tfds_dir)
  assert [r["id"] for r in train] == [f"train_{i}" for i in range(5)]
  assert train[-1]["golden_answers"] == ["hotpotqa-4"]
  assert [r["id"] for r in train[1:4:2]] == ["train_1", "train_3"] and train[5:] == []
  with pytest.raises(IndexError, match="index 5 out of range for 5 records"):
    train[5]  # noqa: B018
  assert "tensorflow" not in sys.modules


def test_prepared_data_lives_under_tfds_dir(flashrag_dir, tfds_dir):
  builder = qa_builders.prepare("nq", flashrag_dir, tfds_dir)
  assert str(builder.data_dir).startswith(tfds_dir)
  assert sorted(builder.info.splits) == ["dev", "test", "train"]
  assert any(f.startswith("rag_r1_qa-test.array_record") for f in os.listdir(builder.data_dir))


def test_missing_split_and_dataset_are_clear(flashrag_dir, tfds_dir):
  with pytest.raises(ValueError, match=r"bamboogle has no split 'train'; available: \['test'\]"):
    qa_builders.load_split("bamboogle", "train", flashrag_dir, tfds_dir)
  with pytest.raises(FileNotFoundError, match=r"no squad files under .*/squad: expected "
                     r"\{train,dev,test\}\{.jsonl,.json,.parquet\}"):
    qa_builders.load_split("squad", "test", flashrag_dir, tfds_dir)
  with pytest.raises(FileNotFoundError, match="no nq files under"):
    qa_builders.load_split("nq", "test", os.path.join(flashrag_dir, "nowhere"), tfds_dir)


def test_edited_source_is_prepared_afresh(tmp_path):
  path = write_jsonl(tmp_path / "src" / "popqa" / "test.jsonl", _qa_rows("popqa", "test", 2))
  first = qa_builders.load_split("popqa", "test", str(tmp_path / "src"), str(tmp_path / "tfds"))
  assert len(first) == 2
  write_jsonl(path, _qa_rows("popqa", "test", 4))
  second = qa_builders.load_split("popqa", "test", str(tmp_path / "src"), str(tmp_path / "tfds"))
  assert len(second) == 4 and second[3]["id"] == "test_3"


def test_missing_ids_are_numbered_and_int_ids_become_strings(tmp_path):
  path = write_jsonl(tmp_path / "musique" / "dev.jsonl", [
      {"question": "a?", "golden_answers": ["x"]}, "",
      {"id": 7, "question": "b?", "golden_answers": ["y"]},
      {"question": "c?", "golden_answers": ["z"]}])
  records = qa_builders.load_split("musique", "dev", tfds_dir=str(tmp_path / "t"),
                                   files={"dev": path})
  assert [r["id"] for r in records] == ["dev_0", "7", "dev_2"]


@pytest.mark.parametrize("bad_line,message", [
    ('{"id": "1", "question": "q?", "golden_answers": ["a"]', "bad JSON"),
    ('{"id": "1", "golden_answers": ["a"]}', "missing or empty 'question'"),
    ('{"id": "1", "question": "  ", "golden_answers": ["a"]}', "missing or empty 'question'"),
    ('{"id": "1", "question": "q?", "golden_answers": ["a", 2]}', "must be a non-empty list of"),
    ('{"id": "1", "question": "q?", "golden_answers": []}', "must be a non-empty list of str"),
    ('["q?", ["a"]]', "expected a JSON object"),
])
def test_malformed_qa_rows_fail_with_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({"id": "0", "question": "q?", "golden_answers": ["a"]})
  path = write_jsonl(tmp_path / "data" / "nq" / "test.jsonl", [good, "", bad_line, good])
  with pytest.raises(ValueError, match=f"{path}:3: .*{message}"):
    qa_builders.load_split("nq", "test", str(tmp_path / "data"), str(tmp_path / "tfds"))
  written = [f for _, _, fs in os.walk(tmp_path / "tfds") for f in fs]
  assert not any("array_record" in f for f in written)


def test_non_utf8_bytes_fail_with_file_line_and_column(tmp_path):
  good = json.dumps({"id": "0", "question": "q?", "golden_answers": ["a"]}).encode()
  bad = b'{"id": "1", "question": "caf\xe9?", "golden_answers": ["a"]}'  # Latin-1 e-acute
  path = tmp_path / "data" / "nq" / "test.jsonl"
  os.makedirs(path.parent)
  path.write_bytes(b"\n".join([good, good, bad, good]) + b"\n")
  with pytest.raises(ValueError, match=rf"^{path}:3: not UTF-8 text \(byte 0xe9 at column 29\)"):
    qa_builders.load_split("nq", "test", str(tmp_path / "data"), str(tmp_path / "tfds"))
  array = tmp_path / "sft.json"
  array.write_bytes(b'[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "\xff"}]')
  with pytest.raises(ValueError, match=rf"^{array}:3: not UTF-8 text \(byte 0xff at column 20\)"):
    qa_builders.load_split("sft", "train", tfds_dir=str(tmp_path / "t"),
                           files={"train": str(array)})


def test_sft_json_array_and_jsonl(tmp_path, tfds_dir):
  rows = [{"instruction": "Q1", "input": "", "output": "<think>a</think>"},
          {"instruction": "Q2", "output": "<answer> b </answer>", "system": "s"}]
  os.makedirs(tmp_path / "sft")
  with open(tmp_path / "sft" / "train.json", "w") as f:
    json.dump(rows, f, indent=2)
  write_jsonl(tmp_path / "sft" / "dev.jsonl", rows[:1])
  train = qa_builders.load_split("sft", "train", str(tmp_path), tfds_dir)
  assert list(train) == [{"instruction": "Q1", "input": "", "output": "<think>a</think>",
                          "system": ""},
                         {"instruction": "Q2", "input": "", "output": "<answer> b </answer>",
                          "system": "s"}]
  assert len(qa_builders.load_split("sft", "dev", str(tmp_path), tfds_dir)) == 1


@pytest.mark.parametrize("text,line,message", [
    ('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a"}\n]', 3, "'output' must"),
    ('[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": 1, "output": "b"}]', 4,
     "'instruction' must be a non-empty string"),
    ('[\n  {"instruction": "a", "output": "b"}\n  {"instruction": "a", "output": "b"}]', 3,
     r"expected ',' or '\]'"),
    ('[\n  {"instruction": "a", "output": "b",\n   "input": ]\n]', 3, "bad JSON"),
    ('{"instruction": "a", "output": "b"}', 1, "expected a JSON array"),
    ('[{"instruction": "a", "output": "b", "history": [["q", "a"]]}]', 1, "'history'"),
])
def test_malformed_sft_rows_fail_with_file_and_line(tmp_path, text, line, message):
  path = tmp_path / "sft.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"{path}:{line}: .*{message}"):
    qa_builders.load_split("sft", "train", tfds_dir=str(tmp_path / "t"),
                           files={"train": str(path)})


def test_iterator_over_a_builder_split_is_deterministic_and_resumable(flashrag_dir, tfds_dir):
  records = qa_builders.load_split("rl", "train", flashrag_dir, tfds_dir)
  ids = lambda batch: [r["id"] for r in batch]  # noqa: E731
  a = iterator.BatchIterator(records, batch_size=3, seed=11)
  first = [ids(next(a)) for _ in range(2)]
  state = json.loads(json.dumps(a.get_state()))
  rest = [ids(next(a)) for _ in range(3)]
  b = iterator.BatchIterator(records, batch_size=3, seed=11)
  b.set_state(state)
  assert [ids(next(b)) for _ in range(3)] == rest
  assert ids(next(iterator.BatchIterator(records, 3, seed=11))) == first[0]
  assert ids(next(iterator.BatchIterator(records, 3, seed=12))) != first[0]
  # Epoch 0 (5 records) is batch 0 plus the first two of batch 1: each record once.
  assert sorted(first[0] + first[1][:2]) == [f"train_{i}" for i in range(5)]
