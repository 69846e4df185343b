"""Start-up path checks: every missing path in one message naming its field, only the paths
the configured stages read, and config docstring commands that name every path they need."""

import json
import os
import re
import subprocess
import sys

import pytest

from configs import common, rag_r1, rag_r1_qwen2_5_7b, search_r1
from rag_r1_jax import config_paths, config_validation
from tests.conftest import require_asset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch(path, text="{}"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def _model_dir(path):
  _touch(os.path.join(path, "config.json"))
  return str(path)


def _files_config(tmp_path, **data):
  """Qwen-style run on user files: hf model, flashrag data, faiss over a corpus on disk."""
  c = common.base_config()
  c.stages = "rl,eval"
  c.model.source = "hf"
  c.model.path = _model_dir(tmp_path / "model")
  c.data.source = "flashrag"
  c.data.dir = str(tmp_path / "data")
  c.data.train_datasets = "nq_search"
  c.data.eval_datasets = "nq_search"
  _touch(tmp_path / "data" / "nq_search" / "train.parquet")
  _touch(tmp_path / "data" / "nq_search" / "test.parquet")
  c.retrieval.encoder_path = _model_dir(tmp_path / "e5")
  c.retrieval.corpus_path = _touch(tmp_path / "wiki-18.jsonl")
  c.retrieval.index_path = _touch(tmp_path / "e5_Flat.index")
  for key, value in data.items():
    c.data[key] = value
  return c


def test_a_complete_run_on_files_has_no_problem(tmp_path):
  assert config_paths.path_problems(_files_config(tmp_path)) == []


def test_every_missing_path_is_named_with_its_field_in_one_message(tmp_path):
  c = _files_config(tmp_path)
  c.stages = "sft,rl,eval"
  c.model.path = str(tmp_path / "no_model")
  c.tokenizer.path = str(tmp_path / "no_tokenizer")
  c.data.train_datasets = f"nq_search,{tmp_path}/rag_r1/rl.json,hotpot"
  os.makedirs(tmp_path / "data" / "popqa")
  _touch(tmp_path / "data" / "popqa" / "train.jsonl")
  c.data.eval_datasets = "popqa"
  c.retrieval.encoder_path = "asset:no_such_asset"
  c.retrieval.corpus_path = ""
  c.retrieval.index_path = str(tmp_path)  # a directory, not an index file
  with pytest.raises(config_validation.ConfigError) as e:
    config_paths.validate_paths(c)
  lines = str(e.value).splitlines()
  assert lines[0].startswith("missing or unusable paths")
  assert lines[1:] == [
      f"  config.model.path='{tmp_path}/no_model': {tmp_path}/no_model does not exist",
      f"  config.tokenizer.path='{tmp_path}/no_tokenizer': {tmp_path}/no_tokenizer does not exist",
      "  config.sft.data_path='': is required for the sft stage when config.data.source="
      "'flashrag' (it writes no demonstrations): an alpaca / LLaMA-Factory JSON file, as RAG-R1 ships its "
      "SFT set; or leave sft out of config.stages",
      f"  config.data.train_datasets: '{tmp_path}/rag_r1/rl.json': dataset file "
      f"{tmp_path}/rag_r1/rl.json does not exist",
      f"  config.data.train_datasets: 'hotpot': no hotpot files under {tmp_path}/data/hotpot: "
      f"expected {{train,dev,test}}{{.jsonl,.json,.parquet}} (config data.dir='{tmp_path}/data')",
      "  config.data.eval_datasets: 'popqa': no test or dev file (['train'] only)",
      "  config.retrieval.encoder_path='asset:no_such_asset': unknown asset 'no_such_asset'; "
      "known: ['minilm_dir', 'qwen_tiktoken', 'smollm2_gguf', 'wiki_extracts']",
      "  config.retrieval.corpus_path='': is required when config.data.source='flashrag' with "
      "config.retrieval.backend='faiss'",
      f"  config.retrieval.index_path='{tmp_path}': {tmp_path} is not a FAISS index file"]


def test_a_missing_data_dir_is_one_problem_naming_its_datasets(tmp_path):
  c = _files_config(tmp_path, dir=str(tmp_path / "nowhere"), eval_datasets="nq,bamboogle")
  assert config_paths.path_problems(c) == [
      f"config.data.dir='{tmp_path}/nowhere': does not exist; it must hold the datasets named "
      "in config.data.train_datasets and config.data.eval_datasets (nq_search, nq, bamboogle) "
      "as <data.dir>/<name>/{train,dev,test}.{jsonl,json,parquet}"]


def test_model_paths_are_checked_for_what_their_source_reads(tmp_path):
  c = _files_config(tmp_path)
  c.model.path = str(tmp_path / "data")  # a directory without config.json
  assert config_paths.path_problems(c) == [
      f"config.model.path='{tmp_path}/data': {tmp_path}/data is not a Hugging Face model "
      "directory (no config.json)"]
  c.model.source = "gguf"
  assert config_paths.path_problems(c) == [
      f"config.model.path='{tmp_path}/data': {tmp_path}/data is not a GGUF file"]
  c.model.source, c.model.path = "scratch", ""
  assert config_paths.path_problems(c) == [
      "config.tokenizer.path='': is required with config.tokenizer.kind='hf' and "
      "config.model.source='scratch' (there is no checkpoint to take it from)"]


def test_only_the_paths_of_the_configured_stages_and_backend_are_checked(tmp_path):
  c = _files_config(tmp_path)
  c.data.train_datasets = "missing_train_set"
  c.stages = "eval"  # RL's questions are not read
  assert config_paths.path_problems(c) == []
  c.stages = "sft"
  c.sft.data_path = _touch(tmp_path / "sft.json", "[]")
  c.retrieval.corpus_path = c.retrieval.index_path = c.retrieval.encoder_path = ""
  assert config_paths.path_problems(c) == []  # SFT on a file neither searches nor reads QA
  c.stages = "eval"
  c.retrieval.backend = "server"
  assert config_paths.path_problems(c) == []
  c.retrieval.backend = "bm25"
  c.retrieval.corpus_path = _touch(tmp_path / "corpus.jsonl")
  c.retrieval.index_path = str(tmp_path / "no_bm25_index")
  assert config_paths.path_problems(c) == [
      f"config.retrieval.index_path='{tmp_path}/no_bm25_index': {tmp_path}/no_bm25_index "
      "does not exist"]
  c.retrieval.backend = "hybrid"  # both indexes, and the dense one's encoder
  c.retrieval.bm25_index_path = c.retrieval.index_path
  c.retrieval.index_path = ""
  assert config_paths.path_problems(c) == [
      "config.retrieval.encoder_path='': is required when config.retrieval.backend='hybrid'",
      "config.retrieval.index_path='': is required when config.data.source='flashrag' with "
      "config.retrieval.backend='hybrid'",
      f"config.retrieval.bm25_index_path='{tmp_path}/no_bm25_index': {tmp_path}/no_bm25_index "
      "does not exist"]


def test_packaged_configs_need_no_user_path():
  require_asset("minilm_dir")
  assert config_paths.path_problems(rag_r1.get_config("smoke")) == []


def _command_overrides(module) -> dict[str, str]:
  """The --config.<field>=<value> overrides of the config docstring's `python main.py` command."""
  command = module.__doc__.split("python main.py", 1)[1].split("\n\n", 1)[0]
  return dict(re.findall(r"--config\.([\w.]+)=(\S+)", command))


def _create_paths(c):
  """Creates every path the config names, as the user's files would be laid out."""
  _model_dir(c.model.path)
  _model_dir(c.retrieval.encoder_path)
  for path in (c.retrieval.corpus_path, c.retrieval.index_path, c.sft.data_path):
    if path:
      _touch(path)
  ext = ".parquet" if c.name.startswith("search_r1") else ".jsonl"
  for field, split in (("train_datasets", "train"), ("eval_datasets", "test")):
    for name in c.data[field].split(","):
      _touch(os.path.join(c.data.dir, name, split + ext))


@pytest.mark.parametrize("module,variant", [(rag_r1_qwen2_5_7b, "mq"), (rag_r1_qwen2_5_7b, "ppo"),
                                            (search_r1, "grpo"), (search_r1, "ppo")])
def test_docstring_command_names_every_path_and_runs_once_they_exist(tmp_path, module, variant):
  c = module.get_config(variant)
  config_validation.validate(c)
  overrides = _command_overrides(module)
  for field, value in overrides.items():
    section, name = field.split(".")
    c[section][name] = str(tmp_path / value.lstrip("/"))
  problems = config_paths.path_problems(c)
  assert sorted(line.split("=")[0] for line in problems) == sorted(
      f"config.{field}" for field in overrides), problems
  _create_paths(c)
  assert config_paths.path_problems(c) == []


def test_search_r1_config_holds_its_hyperparameters():
  grpo, ppo = search_r1.get_config("grpo"), search_r1.get_config("ppo")
  for c in (grpo, ppo):
    assert (c.stages, c.data.prompt, c.rollout.mode, c.rollout.max_turns, c.retrieval.topk) == (
        "rl,eval", "paper_sq", "sq", 2, 3)
    assert (c.rl.batch_size, c.rl.mini_batch_size, c.rl.learning_rate, c.rl.warmup_ratio,
            c.rl.kl_coef, c.rl.steps, c.rl.eval_every) == (512, 256, 1e-6, 0.285, 1e-3, 1005, 50)
    # 64-row microbatches, as its ppo_micro_batch_size
    assert c.rl.mini_batch_size * c.rl.group_size // c.rl.microbatches == 64
  assert (grpo.rl.group_size, grpo.rl.kl_estimator) == (5, "k3")
  assert (ppo.rl.group_size, ppo.rl.critic_learning_rate, ppo.rl.critic_warmup_ratio,
          ppo.rl.kl_reward_estimator) == (1, 1e-5, 0.015, "k1")
  with pytest.raises(ValueError, match="unknown variant 'dapo'"):
    search_r1.get_config("dapo")


def test_main_names_every_missing_path_before_loading_anything(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/search_r1.py",
       f"--config.model.path={tmp_path}/Qwen2.5-3B", f"--config.data.dir={tmp_path}/data",
       f"--config.retrieval.encoder_path={tmp_path}/e5-base-v2",
       f"--config.retrieval.corpus_path={tmp_path}/wiki-18.jsonl",
       f"--config.retrieval.index_path={tmp_path}/e5_Flat.index", f"--workdir={tmp_path}/run"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  fields = re.findall(r"^  config\.([\w.]+)", result.stderr, re.M)
  assert fields == ["model.path", "data.dir", "retrieval.encoder_path", "retrieval.corpus_path",
                    "retrieval.index_path"], result.stderr
  assert not os.path.exists(tmp_path / "run")
  assert result.stdout == ""
