"""Builds the configured Retriever from `config.retrieval` (faiss | bm25 | hybrid | server).

The rollout engine calls `build_retriever(config.retrieval)`; tests and small demos pass
`documents=` to index a list of Documents in memory instead of reading corpus/index files.
Outside a run, `retrieval_config(backend=..., ...)` gives a `config.retrieval` with the
declared defaults (configs/common.py) and the named fields set. Paths may be `asset:NAME`.
"""

import os
from typing import Sequence

from jax.sharding import Mesh

from rag_r1_jax import assets
from rag_r1_jax.retrieval import fusion
from rag_r1_jax.retrieval import index as index_lib
from rag_r1_jax.retrieval.base import Document, Retriever

BACKENDS = ("faiss", "bm25", "hybrid", "server")
# Backends that encode queries with the sentence encoder at retrieval.encoder_path.
ENCODER_BACKENDS = ("faiss", "hybrid")


def retrieval_config(**fields):
  """configs/common.py's `config.retrieval` with `fields` set; an undeclared field is refused."""
  from configs.common import base_config
  cfg = base_config().retrieval
  for name, value in fields.items():
    if name not in cfg:
      raise ValueError(f"retrieval has no field {name!r}; the fields are {sorted(cfg)}")
    cfg[name] = value
  return cfg


def encoder_spec_from_config(cfg, model_dir: str):
  """The model's inferred EncoderSpec with any config overrides (empty / 0 / None: inferred)."""
  from rag_r1_jax.retrieval import encoder as encoder_lib
  return encoder_lib.infer_spec(model_dir, pooling=cfg.pooling or None, normalize=cfg.normalize,
                                query_prefix=cfg.query_prefix,
                                passage_prefix=cfg.passage_prefix,
                                max_length=cfg.max_length or None)


def load_encoder(cfg, mesh: Mesh | None = None):
  """The SentenceEncoder at `retrieval.encoder_path` (a directory or `asset:NAME`)."""
  from rag_r1_jax.retrieval import encoder as encoder_lib
  if not cfg.encoder_path:
    raise ValueError("retrieval.encoder_path is empty; set it to a Hugging Face BERT-family "
                     "directory (e.g. asset:minilm_dir)")
  path = assets.resolve(cfg.encoder_path)
  return encoder_lib.SentenceEncoder.from_pretrained(
      path, encoder_spec_from_config(cfg, path), mesh=mesh,
      batch_size=int(cfg.encode_batch_size), seq_bucket=int(cfg.encode_seq_bucket))


def index_params_from_config(cfg) -> index_lib.IndexParams:
  return index_lib.IndexParams(
      index_type=cfg.index_type, fp16=bool(cfg.fp16), hnsw_m=int(cfg.hnsw_m),
      hnsw_ef_search=int(cfg.hnsw_ef_search), ivf_nlist=int(cfg.ivf_nlist),
      ivf_nprobe=int(cfg.ivf_nprobe), pq_m=int(cfg.pq_m))


def fusion_params_from_config(cfg) -> fusion.FusionParams:
  return fusion.FusionParams(method=cfg.fusion, dense_weight=float(cfg.fusion_dense_weight),
                             bm25_weight=float(cfg.fusion_bm25_weight),
                             rrf_k=float(cfg.rrf_k), depth=int(cfg.fusion_depth))


def build_retriever(cfg, documents: Sequence[Document] | None = None,
                    mesh: Mesh | None = None, progress: bool = False,
                    encoder=None) -> Retriever:
  """The Retriever `cfg` (a `config.retrieval` ConfigDict) asks for.

  `encoder` (faiss, hybrid): a SentenceEncoder already loaded from cfg.encoder_path, shared by
  several retrievers so each does not reload and recompile it.

  - server: RemoteRetriever(server_url) with timeout_s / max_retries.
  - bm25: over `documents`, else a saved index at index_path (built from corpus_path),
    else built from corpus_path in memory.
  - faiss: encoder at encoder_path over `documents` (in-memory index), else the saved index
    at index_path with its corpus at corpus_path (mismatches are refused).
  - hybrid: the faiss retriever above and a BM25 one over the same documents (a saved BM25
    index at bm25_index_path, else built in memory), fused as cfg.fusion says.
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
  if backend == "faiss":
    return _build_dense(cfg, documents, mesh, progress, encoder)
  return _build_hybrid(cfg, documents, mesh, progress, encoder)


def _require_corpus(cfg) -> str:
  if not cfg.corpus_path:
    raise ValueError(f"retrieval.backend is {cfg.backend!r} without in-memory documents, so "
                     "retrieval.corpus_path must name the corpus JSONL")
  return assets.resolve(cfg.corpus_path)


def _build_bm25(cfg, documents, progress: bool) -> Retriever:
  from rag_r1_jax.retrieval.bm25 import BM25Retriever
  from rag_r1_jax.retrieval.docstore import JsonlDocStore
  if documents is not None:
    return BM25Retriever.from_documents(documents, progress=progress)
  corpus_path = _require_corpus(cfg)
  index_path = assets.resolve(cfg.index_path) if cfg.index_path else ""
  if index_path and os.path.isdir(index_path):
    return BM25Retriever.load(index_path, corpus_path)
  return BM25Retriever.from_docstore(JsonlDocStore.build(corpus_path), progress=progress)


def _build_dense(cfg, documents, mesh, progress: bool, encoder=None) -> Retriever:
  from rag_r1_jax.retrieval.dense import DenseRetriever
  encoder = encoder or load_encoder(cfg, mesh)
  params = index_params_from_config(cfg)
  if documents is not None:
    return DenseRetriever.from_documents(encoder, documents, params, progress=progress)
  if not cfg.index_path:
    raise ValueError(f"retrieval.backend is {cfg.backend!r} without in-memory documents, so "
                     "retrieval.index_path must name an index built with "
                     "`python -m rag_r1_jax.retrieval build`")
  return DenseRetriever.load(encoder, assets.resolve(cfg.index_path), _require_corpus(cfg),
                             params)


def _build_hybrid(cfg, documents, mesh, progress: bool, encoder=None) -> Retriever:
  from rag_r1_jax.retrieval.bm25 import BM25Retriever
  from rag_r1_jax.retrieval.hybrid import HybridRetriever
  params = fusion_params_from_config(cfg)
  dense = _build_dense(cfg, documents, mesh, progress, encoder)
  if documents is None and cfg.bm25_index_path:
    bm25 = BM25Retriever.load(assets.resolve(cfg.bm25_index_path), _require_corpus(cfg))
  else:
    bm25 = BM25Retriever.from_docstore(dense.docs, progress=progress)
  return HybridRetriever(dense, bm25, params)
