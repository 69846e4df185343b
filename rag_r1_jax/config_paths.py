"""Start-up check of the files and directories a run's config names, all problems at once.

Only what the configured stages will read is checked: the model checkpoint and tokenizer;
`sft.data_path` for SFT on files; the QA files of `data.train_datasets` (rl) and
`data.eval_datasets` (eval); the retriever's encoder, index and corpus for the stages that
search over a corpus on disk. `asset:NAME` paths must name an installed asset. It runs before
anything loads, so a wrong path costs seconds instead of a model load.
"""

import os
from typing import Callable

from rag_r1_jax import assets
from rag_r1_jax import tasks
from rag_r1_jax.data import sources
from rag_r1_jax.retrieval import factory as retrieval_factory
from rag_r1_jax.config_validation import ConfigError, stages


def _is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json"))


class _Problems:
  """Collects 'config.<field>=<value>: <what is wrong>' lines."""

  def __init__(self, config):
    self.config = config
    self.lines: list[str] = []

  def value(self, field: str):
    node = self.config
    for part in field.split("."):
      node = node[part]
    return node

  def add(self, field: str, message: str) -> None:
    self.lines.append(f"config.{field}={self.value(field)!r}: {message}")

  def entry(self, field: str, entry: str, message: str) -> None:
    """A problem with one entry of a comma-separated field."""
    self.lines.append(f"config.{field}: {entry!r}: {message}")

  def require(self, field: str, why: str) -> bool:
    """Adds a problem when the field is empty; True when it is set."""
    if self.value(field):
      return True
    self.add(field, f"is required {why}")
    return False

  def exists(self, field: str, ok: Callable[[str], bool], expected: str) -> None:
    """Adds a problem unless the field's (resolved) path passes `ok`."""
    try:
      path = assets.resolve(str(self.value(field)))
    except (assets.AssetNotInstalledError, KeyError) as e:
      self.add(field, str(e).strip("'\""))
      return
    if not ok(path):
      what = "does not exist" if not os.path.exists(path) else f"is not {expected}"
      self.add(field, f"{path} {what}")


def path_problems(config) -> list[str]:
  """Every missing or unusable path the configured stages would read, one line each."""
  p = _Problems(config)
  run = set(stages(config))
  task = tasks.task_class(config.data.source)
  files_source = not task.own_documents

  model = config.model
  if model.source == "hf" and p.require("model.path", "when config.model.source='hf'"):
    p.exists("model.path", _is_model_dir, "a Hugging Face model directory (no config.json)")
  if model.source == "gguf" and p.require("model.path", "when config.model.source='gguf'"):
    p.exists("model.path", os.path.isfile, "a GGUF file")
  if config.tokenizer.kind == "hf":
    if config.tokenizer.path:
      p.exists("tokenizer.path", os.path.isdir, "a tokenizer directory")
    elif model.source == "scratch":
      p.add("tokenizer.path", "is required with config.tokenizer.kind='hf' and "
            "config.model.source='scratch' (there is no checkpoint to take it from)")

  if "sft" in run and config.sft.data_path:
    p.exists("sft.data_path", os.path.isfile, "a file")
  elif "sft" in run and not task.has_demonstrations:
    p.add("sft.data_path", f"is required for the sft stage when config.data.source="
          f"{config.data.source!r} (it writes no demonstrations): an alpaca / LLaMA-Factory "
          "JSON file, as RAG-R1 ships its SFT set; or leave sft out of config.stages")

  if files_source:
    _dataset_problems(p, [field for stage, field in (("rl", "data.train_datasets"),
                                                     ("eval", "data.eval_datasets"))
                          if stage in run])

  demonstrations_search = ("sft" in run and not config.sft.data_path
                           and task.has_demonstrations)
  if run & {"rl", "eval"} or demonstrations_search:
    _retrieval_problems(p, files_source)
  return p.lines


def _dataset_problems(p: _Problems, fields: list[str]) -> None:
  """Each entry of the comma-separated dataset fields resolves to files with a split the
  stage reads (train for RL; test, else dev, for evaluation)."""
  from rag_r1_jax.data import qa_builders
  data_dir = os.path.expanduser(p.config.data.dir)
  names = [(field, entry) for field in fields for entry in sources.comma_list(p.value(field))
           if not qa_builders.is_path_spec(entry)]
  if names and not os.path.isdir(data_dir):
    held = ", ".join(dict.fromkeys(entry for _, entry in names))
    p.add("data.dir", f"{'is empty' if not data_dir else 'does not exist'}; it must hold the "
          f"datasets named in {' and '.join(f'config.{f}' for f in fields)} ({held}) as "
          "<data.dir>/<name>/{train,dev,test}.{jsonl,json,parquet}")
  for field in fields:
    splits = ("train",) if field == "data.train_datasets" else ("test", "dev")
    entries = sources.comma_list(p.value(field))
    if not entries:
      p.add(field, "names no dataset")
    for entry in entries:
      if not qa_builders.is_path_spec(entry) and not os.path.isdir(data_dir):
        continue  # reported once, as data.dir
      try:
        spec = qa_builders.resolve_spec(entry, data_dir)
      except (FileNotFoundError, ValueError) as e:
        p.entry(field, entry, str(e))
        continue
      if not any(spec.split_path(split) for split in splits):
        p.entry(field, entry, f"no {' or '.join(splits)} file ({sorted(spec.files)} only)")


def _retrieval_problems(p: _Problems, files_source: bool) -> None:
  backend = p.config.retrieval.backend
  dense = backend in retrieval_factory.ENCODER_BACKENDS
  if dense and p.require("retrieval.encoder_path",
                         f"when config.retrieval.backend={backend!r}"):
    p.exists("retrieval.encoder_path", _is_model_dir,
             "a Hugging Face encoder directory (no config.json)")
  if not files_source or backend == "server":
    return
  why = (f"when config.data.source={p.config.data.source!r} with "
         f"config.retrieval.backend={backend!r}")
  if p.require("retrieval.corpus_path", why):
    p.exists("retrieval.corpus_path", os.path.isfile, "a file")
  if dense and p.require("retrieval.index_path", why):
    p.exists("retrieval.index_path", os.path.isfile, "a FAISS index file")
  if backend == "bm25" and p.config.retrieval.index_path:
    p.exists("retrieval.index_path", os.path.isdir, "a BM25 index directory")
  if backend == "hybrid" and p.config.retrieval.bm25_index_path:
    p.exists("retrieval.bm25_index_path", os.path.isdir, "a BM25 index directory")


def validate_paths(config) -> None:
  """Raises ConfigError naming every path problem of path_problems, with its field."""
  problems = path_problems(config)
  if problems:
    raise ConfigError("missing or unusable paths (fix them, or leave the stage that reads "
                      "them out of config.stages):\n  " + "\n  ".join(problems))
