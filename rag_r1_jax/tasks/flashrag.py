"""QA files: `data.train_datasets` / `data.eval_datasets`, each entry a dataset name under
`data.dir` (FlashRAG layout), a directory, or one .jsonl / .json / .parquet file
(data/qa_builders.py `resolve_spec`). Evaluation groups rows by their data_source, so a
Search-R1 file mixing nq and hotpotqa is scored per source. The retrieval corpus comes from
`retrieval.corpus_path` (or an index / server)."""

from rag_r1_jax.data import sources
from rag_r1_jax.tasks.base import Task


def _say(message: str) -> None:
  from rag_r1_jax import multihost
  if multihost.is_primary():
    print(message, flush=True)


def _load(config, spec, split: str) -> list[dict]:
  """The rows of one dataset's split, with their count (per data_source) printed."""
  from rag_r1_jax.data import qa_builders
  path = spec.split_path(split)
  rows = [dict(r) for r in qa_builders.load_split(
      spec.name, split, tfds_dir=config.data.tfds_dir or None, files={split: path})]
  counts = sources.source_counts(rows)
  detail = ", ".join(f"{s} {n}" for s, n in counts.items())
  _say(f"data: {spec.name} {split}: {len(rows)} rows from {path}"
       + (f" ({detail})" if len(counts) > 1 else ""))
  return rows


def _specs(config, field: str):
  from rag_r1_jax.data import qa_builders
  entries = sources.comma_list(config.data[field])
  if not entries:
    raise ValueError(f"config.data.{field} names no dataset")
  return [qa_builders.resolve_spec(entry, config.data.dir) for entry in entries]


class FlashRAGFiles(Task):
  """Questions from the user's QA files; documents from config.retrieval."""

  own_documents = False

  def train_rows(self) -> list[dict]:
    rows = []
    for spec in _specs(self.config, "train_datasets"):
      if spec.split_path("train") is None:
        raise FileNotFoundError(f"{spec.name}: no train file ({sorted(spec.files)} only); "
                                "config.data.train_datasets")
      rows.extend(_load(self.config, spec, "train"))
    return rows

  def eval_datasets(self) -> dict[str, list[dict]]:
    """Each dataset's test split (dev where it has none, as FlashRAG's multi-hop sets), by
    data_source."""
    out: dict[str, list[dict]] = {}
    origin: dict[str, str] = {}
    for spec in _specs(self.config, "eval_datasets"):
      split = "test" if spec.split_path("test") else "dev" if spec.split_path("dev") else None
      if split is None:
        raise FileNotFoundError(f"{spec.name}: neither a test nor a dev file "
                                f"({sorted(spec.files)} only); config.data.eval_datasets")
      if split == "dev" and not spec.single_file:
        _say(f"eval: {spec.name} has no test split; evaluating its dev split")
      rows = _load(self.config, spec, split)
      for source, source_rows in sources.group_by_source(rows).items():
        if source in out:
          raise ValueError(f"data_source {source!r} comes from both {origin[source]} and "
                           f"{spec.name}; evaluate them in separate runs or rename one")
        out[source], origin[source] = source_rows, spec.name
    return out


TASK = FlashRAGFiles
