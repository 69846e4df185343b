"""Where a run's questions and documents come from: `config.data.source`, in one registry.

Each source gives RL training rows, evaluation datasets, (when it has them in memory) the
documents to index and (when it has a teacher) stage 1's trajectories. Rows are dicts with id,
question, golden_answers; rows read from files also carry data_source and extra_info.

- synthetic_world: the generated world's questions and passages.
- wiki_extracts: questions over the packaged Wikipedia lead extracts (one article or two), and
  those extracts.
- flashrag: QA files named by `data.train_datasets` / `data.eval_datasets`, each entry a
  dataset name under `data.dir` (FlashRAG layout), a directory, or one .jsonl / .json /
  .parquet file (rag_r1_jax/data/qa_builders.py `resolve_spec`). Evaluation groups rows by
  their data_source, so a Search-R1 file mixing nq and hotpotqa is scored per source.
  The retrieval corpus comes from `retrieval.corpus_path`.
"""

import functools
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from rag_r1_jax import multihost
from rag_r1_jax.retrieval.base import Document

# The synthetic world's question kinds, each evaluated as its own dataset.
WORLD_KINDS = ("single", "bridge", "comparison", "fanout")


class DataSource(NamedTuple):
  """A source's readers, each taking the run's config.

  sft_trajectories(config, retriever, truncate, prompt_variant) -> [(user prompt text,
  teacher segments)]: stage 1's examples from the source's own teacher; None where the source
  has none (stage 1 then reads `sft.data_path`).
  """
  train_rows: Callable[..., list[dict]]
  eval_datasets: Callable[..., dict[str, list[dict]]]
  documents: Callable[..., Sequence[Document] | None]
  sft_trajectories: Callable[..., list] | None = None


def comma_list(text: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c']."""
  return [part.strip() for part in str(text).split(",") if part.strip()]


# ---- synthetic_world -------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _world(seed: int, entities: int):
  from rag_r1_jax.data import synthetic_world
  return synthetic_world.make_world(seed, entities)


def world(config):
  """The run's synthetic world (built once per (seed, entities))."""
  if config.data.source != "synthetic_world":
    raise ValueError(f"config.data.source is {config.data.source!r}, not 'synthetic_world'")
  return _world(config.data.world_seed, config.data.world_entities)


def _world_train(config) -> list[dict]:
  return [q.row() for q in world(config).split_questions("train")]


def _world_eval(config) -> dict[str, list[dict]]:
  w = world(config)
  return {kind: [q.row() for q in w.split_questions("test", kinds=(kind,))]
          for kind in WORLD_KINDS}


# ---- wiki_extracts ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _wiki_articles(limit: int):
  from rag_r1_jax.data import wiki_questions
  return wiki_questions.articles(limit)


def wiki_articles(config):
  """The run's Wikipedia extracts (the first `data.wiki_articles`; read once)."""
  return _wiki_articles(config.data.wiki_articles)


def _wiki_train(config) -> list[dict]:
  from rag_r1_jax.data import wiki_questions
  return [row for kind in wiki_questions.KINDS
          for row in wiki_questions.questions(wiki_articles(config), "train", kind)]


def _wiki_eval(config) -> dict[str, list[dict]]:
  from rag_r1_jax.data import wiki_questions
  arts = wiki_articles(config)
  return {"wiki": wiki_questions.questions(arts, "test", "single"),
          "wiki_pairs": wiki_questions.questions(arts, "test", "pair")}


def _wiki_documents(config) -> list[Document]:
  from rag_r1_jax.data import wiki_questions
  return wiki_questions.documents(wiki_articles(config))


def _wiki_sft(config, *args):
  from rag_r1_jax.data import wiki_teacher
  return wiki_teacher.sft_trajectories(config, *args)


def _world_sft(config, *args):
  from rag_r1_jax.data import teacher
  return teacher.sft_trajectories(config, *args)


# ---- files (flashrag) ------------------------------------------------------------------------

def _say(message: str) -> None:
  if multihost.is_primary():
    print(message, flush=True)


def _load(config, spec, split: str) -> list[dict]:
  """The rows of one dataset's split, with their count (per data_source) printed."""
  from rag_r1_jax.data import qa_builders
  path = spec.split_path(split)
  rows = [dict(r) for r in qa_builders.load_split(
      spec.name, split, tfds_dir=config.data.tfds_dir or None, files={split: path})]
  counts = source_counts(rows)
  detail = ", ".join(f"{s} {n}" for s, n in counts.items())
  _say(f"data: {spec.name} {split}: {len(rows)} rows from {path}"
       + (f" ({detail})" if len(counts) > 1 else ""))
  return rows


def _specs(config, field: str):
  from rag_r1_jax.data import qa_builders
  entries = comma_list(config.data[field])
  if not entries:
    raise ValueError(f"config.data.{field} names no dataset")
  return [qa_builders.resolve_spec(entry, config.data.dir) for entry in entries]


def _files_train(config) -> list[dict]:
  rows = []
  for spec in _specs(config, "train_datasets"):
    if spec.split_path("train") is None:
      raise FileNotFoundError(f"{spec.name}: no train file ({sorted(spec.files)} only); "
                              "config.data.train_datasets")
    rows.extend(_load(config, spec, "train"))
  return rows


def _files_eval(config) -> dict[str, list[dict]]:
  """Each dataset's test split (dev where it has none, as FlashRAG's multi-hop sets), by source."""
  out: dict[str, list[dict]] = {}
  origin: dict[str, str] = {}
  for spec in _specs(config, "eval_datasets"):
    split = "test" if spec.split_path("test") else "dev" if spec.split_path("dev") else None
    if split is None:
      raise FileNotFoundError(f"{spec.name}: neither a test nor a dev file "
                              f"({sorted(spec.files)} only); config.data.eval_datasets")
    if split == "dev" and not spec.single_file:
      _say(f"eval: {spec.name} has no test split; evaluating its dev split")
    rows = _load(config, spec, split)
    for source, source_rows in group_by_source(rows).items():
      if source in out:
        raise ValueError(f"data_source {source!r} comes from both {origin[source]} and "
                         f"{spec.name}; evaluate them in separate runs or rename one")
      out[source], origin[source] = source_rows, spec.name
  return out


# ---- the registry ----------------------------------------------------------------------------

SOURCES: Mapping[str, DataSource] = {
    "synthetic_world": DataSource(_world_train, _world_eval,
                                  lambda config: list(world(config).passages), _world_sft),
    "wiki_extracts": DataSource(_wiki_train, _wiki_eval, _wiki_documents, _wiki_sft),
    "flashrag": DataSource(_files_train, _files_eval, lambda config: None),
}


def get(config) -> DataSource:
  """The DataSource config.data.source names."""
  source = config.data.source
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r}; valid: {list(SOURCES)}")
  return SOURCES[source]


# ---- per-source bookkeeping ------------------------------------------------------------------

def source_of(row: Mapping) -> str:
  """A row's data_source ('' when it has none)."""
  return str(row.get("data_source", "") or "")


def source_counts(rows: Sequence[Mapping]) -> dict[str, int]:
  """{data_source: rows}, in first-seen order."""
  counts: dict[str, int] = {}
  for row in rows:
    counts[source_of(row)] = counts.get(source_of(row), 0) + 1
  return counts


def group_by_source(rows: Sequence[dict]) -> dict[str, list[dict]]:
  """Rows split by data_source, in first-seen order, each group in file order."""
  out: dict[str, list[dict]] = {}
  for row in rows:
    out.setdefault(source_of(row), []).append(row)
  return out


def per_source_means(sources: Sequence[str], **values: Sequence[float]) -> dict[str, float]:
  """{'<name>/<source>': mean} of each named per-row value over each source's rows.

  sources: [rows] the data_source of each row. Empty when the rows carry fewer than two
  sources (the overall means say it all).
  """
  names = list(dict.fromkeys(sources))
  if len(names) < 2:
    return {}
  src = np.asarray(sources, dtype=object)
  out = {}
  for key, vals in values.items():
    vals = np.asarray(vals, np.float64)
    if vals.shape != src.shape:
      raise ValueError(f"{key}: {vals.shape[0]} values for {src.shape[0]} rows")
    for name in names:
      out[f"{key}/{name}"] = float(vals[src == name].mean())
  return out
