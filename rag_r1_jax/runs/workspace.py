"""What every stage of a run shares: task, tokenizer, retrievers, prompts, engine, models, and
the stages' files (stage_files.py).

Built lazily from the config, once per process. Paths in the config may name a packaged asset
as `asset:NAME` (see rag_r1_jax/assets.py), so configs hold no machine-specific paths.
"""

import functools
import json
import os
from typing import Sequence

from jax.sharding import Mesh

from rag_r1_jax import assets, multihost, tasks, timing
from rag_r1_jax.data import prompts
from rag_r1_jax.models import factory
from rag_r1_jax.models.decoder import Decoder
from rag_r1_jax.retrieval import factory as retrieval_factory
from rag_r1_jax.retrieval.base import Document, Retriever
from rag_r1_jax.rollout.engine import RolloutEngine, RolloutSettings
from rag_r1_jax.runs.stage_files import StageFiles, write_dir_atomically
from rag_r1_jax.sampling.sampler import Sampler


class Workspace:
  """Lazily built, shared pieces of one run under `workdir`."""

  def __init__(self, config, mesh: Mesh, workdir: str):
    self.config = config
    self.mesh = mesh
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)

  # ---- data --------------------------------------------------------------------------------

  @functools.cached_property
  def task(self) -> tasks.Task:
    """Where questions and documents come from (config.data.source: rag_r1_jax/tasks/)."""
    return tasks.get(self.config)

  @property
  def prompt_variant(self) -> str:
    return self.config.data.prompt or f"paper_{self.config.rollout.mode}"

  def train_rows(self) -> list[dict]:
    """RL training questions: rows with id, question, golden_answers."""
    return self.task.train_rows()

  def eval_datasets(self) -> dict[str, list[dict]]:
    """Evaluation questions: dataset (or data_source) -> rows."""
    return self.task.eval_datasets()

  def documents(self) -> Sequence[Document] | None:
    """In-memory documents to index, else None (the corpus files of config.retrieval)."""
    return self.task.documents()

  @functools.cache
  def rl_retriever(self, index: int) -> Retriever:
    """The retriever RL's `index`-th question set searches: the run's, or one (same backend)
    over the documents the task gives that set. Built once per set."""
    documents = self.task.rl_documents(index)
    return self.retriever if documents is None else self._build_retriever(documents)

  # ---- tokenizer, retrieval, models -----------------------------------------------------------

  @functools.cached_property
  def tokenizer(self):
    kind = self.config.tokenizer.kind
    if kind == "task":
      out = os.path.join(self.workdir, "tokenizer")
      if multihost.is_primary() and not _json_file_whole(os.path.join(out, "tokenizer.json")):
        write_dir_atomically(out, self.task.build_tokenizer)
      multihost.barrier("task tokenizer")  # process 0 wrote it; every process loads it
      return factory.load_tokenizer(out)
    path = self.config.tokenizer.path or self._checkpoint_dir()
    return factory.load_tokenizer(assets.resolve(path))

  @functools.cached_property
  def retriever(self) -> Retriever:
    return self._build_retriever(self.documents())

  @functools.cached_property
  def _retrieval_config(self):
    cfg = self.config.retrieval.copy_and_resolve_references()
    with cfg.unlocked():
      for field in ("encoder_path", "corpus_path", "index_path"):
        cfg[field] = assets.resolve(cfg[field]) if cfg[field] else ""
    return cfg

  @functools.cached_property
  def _encoder(self):
    """The dense retrievers' sentence encoder, loaded (and compiled) once for all of them."""
    with timing.announce(f"retrieval: loading the sentence encoder "
                         f"{self._retrieval_config.encoder_path}"):
      return retrieval_factory.load_encoder(self._retrieval_config)

  def _build_retriever(self, documents: Sequence[Document] | None) -> Retriever:
    cfg = self._retrieval_config
    encoder = self._encoder if cfg.backend in retrieval_factory.ENCODER_BACKENDS else None
    what = (f"{len(documents)} in-memory passages" if documents is not None
            else cfg.index_path or cfg.corpus_path or cfg.server_url)
    with timing.announce(f"retrieval: {cfg.backend} retriever over {what}"):
      return retrieval_factory.build_retriever(cfg, documents=documents, mesh=None,
                                               encoder=encoder,
                                               progress=multihost.is_primary())

  def _checkpoint_dir(self) -> str:
    model_config = self.config.model.copy_and_resolve_references()
    with model_config.unlocked():
      model_config.path = assets.resolve(model_config.path)
    return factory.checkpoint_dir(model_config)

  def initial_model(self) -> Decoder:
    """The configured starting policy (random for source=scratch, else the checkpoint)."""
    model_config = self.config.model.copy_and_resolve_references()
    with model_config.unlocked():
      model_config.path = assets.resolve(model_config.path) if model_config.path else ""
    vocab = len(self.tokenizer) if not self.config.model.vocab_size else None
    model, _ = factory.build_model(model_config, self.mesh, self.config.seed, vocab_size=vocab)
    return model

  @functools.cached_property
  def files(self) -> StageFiles:
    """The stages' exported policies and checkpoints under the workdir."""
    return StageFiles(self.config, self.mesh, self.workdir, lambda: self.tokenizer)

  # ---- rollouts ------------------------------------------------------------------------------

  def eos_token_ids(self, model: Decoder) -> list[int]:
    ids = {self.tokenizer.eos_token_id}
    eos = model.cfg.eos_token_id
    ids.update(eos if isinstance(eos, tuple) else [eos])
    return sorted(i for i in ids if i is not None)

  def engine(self, model: Decoder, retriever: Retriever | None = None) -> RolloutEngine:
    """A rollout engine for `model` searching `retriever` (default: the run's)."""
    sampler = Sampler(model, self.tokenizer, capacity=self.config.rollout.max_total_length,
                      eos_token_ids=self.eos_token_ids(model), mesh=self.mesh,
                      block_size=self.config.rollout.cache_block_size or None)
    return RolloutEngine(sampler, self.tokenizer,
                         self.retriever if retriever is None else retriever,
                         RolloutSettings.from_config(self.config))

  def prompt_texts(self, rows: Sequence[dict]) -> list[str]:
    variant = self.prompt_variant
    return [prompts.apply_chat_template(self.tokenizer, prompts.build_prompt(r["question"], variant))
            for r in rows]


def _json_file_whole(path: str) -> bool:
  """Whether `path` exists and parses as JSON (a write that was cut short does not)."""
  try:
    with open(path, encoding="utf-8") as f:
      json.load(f)
  except (OSError, ValueError):
    return False
  return True
