"""A Search-R1 / RAG-R1 user's assets as they are, through main.py (stages rl,eval).

Tiny files in each format: Search-R1 parquet (nq and hotpotqa mixed), FlashRAG jsonl under a
new dataset name, RAG-R1's JSON array (golden_answers a string); a FAISS index with its corpus
in Search-R1 / FlashRAG layout, built with faiss from MiniLM's vectors (torch); tiny random
Qwen3 and Mistral checkpoints with a character tokenizer.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.char_tokenizer import char_tokenizer
from tests.conftest import require_asset
from tests.data.test_qa_builders import write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [("Paris", "Paris is the capital of France."),
        ("Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
        ("Oslo", "Oslo is the capital of Norway."),
        ("Everest", "Mount Everest is the highest mountain on Earth."),
        ("Danube", "The Danube flows through Vienna and Budapest."),
        ("Curie", "Marie Curie won two Nobel Prizes.")]
VOCAB = 128
ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}


def _save_char_tokenizer(out_dir) -> int:
  """The test character tokenizer, saved; returns its eos id."""
  tok = char_tokenizer()
  assert len(tok) <= VOCAB
  tok.save_pretrained(out_dir)
  return tok.eos_token_id


def _checkpoint(arch, out_dir, **kw):
  """A tiny random HF checkpoint of `arch` with the character tokenizer beside it."""
  from tests.models.hf_fixtures import tiny_hf_model
  os.makedirs(out_dir)
  eos = _save_char_tokenizer(out_dir)
  model = tiny_hf_model(arch, False, out_dir, layers=1, vocab=VOCAB, hidden=32, heads=2,
                        kv_heads=1, eos_token_id=eos, pad_token_id=0, **kw)
  with open(os.path.join(out_dir, "config.json")) as f:
    config = json.load(f)
  config["max_position_embeddings"] = 1024  # the fixture's 256 is shorter than a rollout
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f)
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _search_r1_row(source, question, answers, index, split):
  """A row as Search-R1's scripts/data_process/nq_search.py writes it."""
  prompt = f"Answer the given question. ... Question: {question}\n"
  return {"data_source": source, "prompt": [{"role": "user", "content": prompt}],
          "ability": "fact-reasoning",
          "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
          "extra_info": {"split": split, "index": index}}


def _write_parquet(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)


def _minilm_vectors(minilm_dir, texts) -> np.ndarray:
  """[len(texts), 384] float32: MiniLM's mean-pooled, normalised embeddings (torch)."""
  import torch
  from transformers import AutoModel, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(minilm_dir)
  model = AutoModel.from_pretrained(minilm_dir).eval()
  batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).float()
  pooled = (hidden * mask).sum(1) / mask.sum(1)
  return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
  """Every asset a Search-R1 or RAG-R1 user brings, in its own format and layout."""
  import faiss
  minilm_dir = require_asset("minilm_dir")
  root = tmp_path_factory.mktemp("user")
  mix = root / "search_r1_data" / "nq_hotpotqa_train"
  _write_parquet(str(mix / "train.parquet"), [
      _search_r1_row("nq", "what is the capital of france", ["Paris"], 0, "train"),
      _search_r1_row("hotpotqa", "who wrote hamlet", ["William Shakespeare"], 1, "train")])
  _write_parquet(str(mix / "test.parquet"), [
      _search_r1_row("nq", "what is the capital of norway", ["Oslo"], 0, "test"),
      _search_r1_row("hotpotqa", "which river flows through vienna", ["Danube"], 1, "test"),
      _search_r1_row("nq", "what is the highest mountain", ["Mount Everest", "Everest"], 2,
                     "test")])
  write_jsonl(root / "flashrag" / "my_new_set" / "test.jsonl", [
      {"id": "m0", "question": "who won two nobel prizes?", "golden_answers": ["Marie Curie"]},
      {"id": "m1", "question": "what is the capital of france?", "golden_answers": ["Paris"]}])
  rag_r1_rl = root / "rag_r1" / "rl_train.json"
  os.makedirs(rag_r1_rl.parent)
  rag_r1_rl.write_text(json.dumps([
      {"id": "r0", "question": "where is oslo?", "golden_answers": "Norway"},
      {"id": "r1", "question": "what did curie win?", "golden_answers": "Nobel Prizes"}]))
  index_dir = root / "indexes"
  os.makedirs(index_dir)
  corpus = index_dir / "wiki-18.jsonl"
  write_jsonl(corpus, [{"id": str(i), "contents": f'"{title}"\n{text}'}
                       for i, (title, text) in enumerate(DOCS)])
  vectors = _minilm_vectors(minilm_dir, [f"{title} {text}" for title, text in DOCS])
  index = faiss.index_factory(vectors.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
  index.add(vectors)
  faiss.write_index(index, str(index_dir / "minilm_Flat.index"))
  return {"root": root, "mix": mix, "rag_r1_rl": rag_r1_rl, "corpus": corpus,
          "index": index_dir / "minilm_Flat.index"}


def _run_main(files, model_dir, workdir):
  """configs/search_r1.py (GRPO) on the user's files, shrunk to two steps of a tiny model."""
  overrides = {
      "model.path": model_dir, "model.dtype": "float32", "model.scan_layers": False,
      "model.remat": "none", "data.dir": files["root"] / "flashrag",
      "data.train_datasets": f"{files['mix'] / 'train.parquet'},{files['rag_r1_rl']}",
      "data.eval_datasets": f"{files['mix']},my_new_set", "data.tfds_dir": files["root"] / "tfds",
      "retrieval.encoder_path": "asset:minilm_dir", "retrieval.index_path": files["index"],
      "retrieval.corpus_path": files["corpus"], "retrieval.topk": 1,
      "rollout.max_turns": 1, "rollout.max_turn_tokens": 8, "rollout.max_obs_length": 24,
      "rollout.max_total_length": 768, "rollout.rows_in_flight": 0,
      "rl.steps": 2, "rl.batch_size": 2, "rl.mini_batch_size": 2, "rl.group_size": 2,
      "rl.microbatches": 1, "rl.learning_rate": 1e-2, "rl.warmup_ratio": 0.0,
      "rl.kl_coef": 0.0, "rl.eval_every": 0,
      "rl.entropy_coef": 0.1,  # random policies earn no reward; entropy still moves weights
      "checkpoint.async_save": False, "eval.batch_size": 4, "eval.max_questions": 2}
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  return subprocess.run([sys.executable, "main.py", "--config=configs/search_r1.py:grpo", *args,
                         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("arch,kw", [("qwen3", dict(head_dim=24)),
                                     ("mistral", dict(sliding_window=64))])
def test_main_runs_rl_and_eval_on_a_users_own_files(user_files, tmp_path, arch, kw):
  import torch
  import transformers
  model_dir = str(tmp_path / arch)
  source = _checkpoint(arch, model_dir, **kw)
  workdir = tmp_path / "run"
  result = _run_main(user_files, model_dir, workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  out = result.stdout

  # every file was read in its own format, rows counted per data_source
  assert f"data: nq_hotpotqa_train train: 2 rows from {user_files['mix']}" in out
  assert "(nq 1, hotpotqa 1)" in out
  assert f"data: rl_train train: 2 rows from {user_files['rag_r1_rl']}" in out
  assert "data: nq_hotpotqa_train test: 3 rows" in out and "(nq 2, hotpotqa 1)" in out
  assert "data: my_new_set test: 2 rows" in out
  # the foreign index loaded over its corpus, whose row offsets are cached beside it
  assert f"{user_files['index']} has no minilm_Flat.index.meta.json" in result.stderr
  assert os.path.isfile(str(user_files["corpus"]) + ".offsets.npy")

  with open(workdir / "metrics" / "rl.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "reward" in r] == [1, 2]

  # the RL export: the checkpoint's family, a generation config, loads in transformers
  export = workdir / "rl" / "model"
  with open(export / "config.json") as f:
    assert json.load(f)["architectures"] == [ARCHITECTURES[arch]]
  assert os.path.isfile(export / "generation_config.json")
  trained = transformers.AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
  weights = {k: v.detach().numpy() for k, v in trained.state_dict().items()}
  assert sorted(weights) == sorted(source)
  assert any(not np.allclose(weights[k], source[k]) for k in source)  # RL moved the policy
  tokens = torch.arange(12).reshape(1, 12)
  assert np.isfinite(trained(tokens).logits.detach().numpy()).all()

  # evaluation per data_source, at most two questions each (eval.max_questions=2)
  with open(workdir / "eval" / "rl" / "trajectories.jsonl") as f:
    evaluated = [json.loads(line) for line in f]
  by_source = {}
  for row in evaluated:
    by_source[row["dataset"]] = by_source.get(row["dataset"], 0) + 1
  assert by_source == {"nq": 2, "hotpotqa": 1, "my_new_set": 2}
  with open(workdir / "eval" / "report.md") as f:
    header, _, row = [[cell.strip() for cell in line.strip().strip("|").split("|")]
                      for line in f.readlines()[:3]]
  assert header == ["run (EM)", "NQ", "HotpotQA", "my_new_set", "avg"]
  assert row[0] == "search_r1_grpo:rl" and len(row) == 5
