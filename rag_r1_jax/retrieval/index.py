"""FAISS inner-product indexes (flat, flat fp16, HNSW, IVF-PQ) with a metadata sidecar.

An index file `X` is saved with `X.meta.json` naming the encoder (name and hash), the
dimension, the corpus fingerprint, the index type and the vector count; `load_index`
refuses an index whose encoder or corpus differs from the one the caller uses. An index
built elsewhere (Search-R1's or FlashRAG's `e5_Flat.index`) has no sidecar: `load_foreign_index`
reads it as it is, with only its size and dimension to check.
"""

import dataclasses
import json
import math
import os
import sys
from typing import Iterable

import numpy as np
import tqdm


def _import_faiss():
  """faiss, with its OpenMP runtime started under OMP_WAIT_POLICY=PASSIVE.

  faiss' OpenMP threads spin at barriers by default; when JAX (or another process) shares the
  cores, that spinning turned a 90 ms batched search into 0.3-1.3 s, while passive waiting
  gave 190 ms on the one free core. faiss ships its own libgomp, which reads the variable once,
  when `import faiss` loads it; so the variable is set around that import only and removed
  after: the process environment (child processes, torch's own OpenMP loaded later) stays as
  it was. An OMP_WAIT_POLICY already in the environment wins. Import faiss through this module
  (rag_r1_jax.retrieval.index) first: a faiss imported earlier keeps the spinning default.
  """
  if "faiss" in sys.modules:
    return sys.modules["faiss"]
  ours = "OMP_WAIT_POLICY" not in os.environ
  if ours:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  finally:
    if ours:
      del os.environ["OMP_WAIT_POLICY"]
  return faiss


faiss = _import_faiss()

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# faiss uses its BLAS path only for batches of at least this many queries; the default
# (128000 in faiss-cpu 1.15) keeps rollout-sized batches on a slow per-query loop. 20 makes
# 256 queries x 100k x 384 about 10x faster (bench_retrieval.py). This is process-global.
BLAS_THRESHOLD = 20


class IndexMismatchError(ValueError):
  """A saved index was built with another encoder or corpus than the one in use."""


@dataclasses.dataclass(frozen=True)
class IndexParams:
  """Index construction and search settings; 0 picks a value from the corpus size."""
  index_type: str = "flat"  # flat | hnsw | ivfpq
  fp16: bool = False  # flat only: store vectors as float16 (half the memory, ~exact)
  hnsw_m: int = 32
  hnsw_ef_construction: int = 200
  hnsw_ef_search: int = 128
  ivf_nlist: int = 0  # 0: about 4 * sqrt(n), at most n / 39
  ivf_nprobe: int = 16
  pq_m: int = 0  # 0: dim / 8 sub-quantizers (8 dims each)
  pq_nbits: int = 8
  train_size: int = 0  # 0: all vectors up to 256 * nlist

  def __post_init__(self):
    if self.index_type not in INDEX_TYPES:
      raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {self.index_type!r}")
    if self.fp16 and self.index_type != "flat":
      raise ValueError("fp16 storage applies to the flat index only")


@dataclasses.dataclass(frozen=True)
class IndexMeta:
  """What an index was built from; saved next to it as JSON."""
  encoder_name: str
  encoder_hash: str
  dim: int
  corpus_hash: str
  index_type: str
  count: int
  fp16: bool = False
  params: dict = dataclasses.field(default_factory=dict)
  encoder_spec: dict = dataclasses.field(default_factory=dict)  # pooling, prefixes, max_length


def tune_faiss() -> None:
  """Lowers faiss' BLAS threshold so batched search uses matrix products (BLAS_THRESHOLD)."""
  faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD


def _nlist(n: int, params: IndexParams) -> int:
  if params.ivf_nlist:
    return params.ivf_nlist
  return int(max(1, min(4 * math.sqrt(n), n // 39)))


def new_index(dim: int, num_vectors: int, params: IndexParams) -> faiss.Index:
  """An empty (untrained) inner-product index of the requested type."""
  if params.index_type == "flat":
    if params.fp16:
      return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                        faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)
  if params.index_type == "hnsw":
    index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.hnsw_ef_construction
    return index
  pq_m = params.pq_m or max(1, dim // 8)
  if dim % pq_m:
    raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {dim}")
  quantizer = faiss.IndexFlatIP(dim)
  return faiss.IndexIVFPQ(quantizer, dim, _nlist(num_vectors, params), pq_m, params.pq_nbits,
                          faiss.METRIC_INNER_PRODUCT)


def build_index(chunks: Iterable[np.ndarray], num_vectors: int, params: IndexParams,
                progress: bool = True, train_vectors: np.ndarray | None = None) -> faiss.Index:
  """Adds [rows, dim] float32 chunks to a new index (IVF-PQ trains on the first rows first).

  IVF-PQ needs training vectors before adding: `train_vectors` if given, else the first
  chunk(s) are gathered up to the training size.
  """
  tune_faiss()
  chunks = iter(chunks)
  pending: list[np.ndarray] = []
  first = next(chunks, None)
  if first is None:
    raise ValueError("cannot build an index from zero vectors")
  dim = first.shape[1]
  index = new_index(dim, num_vectors, params)
  pending.append(first)
  if not index.is_trained:
    nlist = index.nlist
    want = params.train_size or min(num_vectors, 256 * max(nlist, 2 ** params.pq_nbits // 4))
    if train_vectors is None:
      while sum(len(c) for c in pending) < want:
        nxt = next(chunks, None)
        if nxt is None:
          break
        pending.append(nxt)
      train_vectors = np.concatenate(pending)[:want]
    index.train(np.ascontiguousarray(train_vectors, np.float32))
    index.nprobe = params.ivf_nprobe
  elif params.index_type == "hnsw":
    index.hnsw.efSearch = params.hnsw_ef_search
  bar = tqdm.tqdm(total=num_vectors, unit="vec", desc=f"index {params.index_type}",
                  disable=not progress)
  for chunk in _chain(pending, chunks):
    index.add(np.ascontiguousarray(chunk, np.float32))
    bar.update(len(chunk))
  bar.close()
  if index.ntotal != num_vectors:
    raise ValueError(f"index holds {index.ntotal} vectors, expected {num_vectors}")
  return index


def _chain(first: list[np.ndarray], rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
  yield from first
  yield from rest


def set_search_params(index: faiss.Index, params: IndexParams) -> None:
  """Applies the search-time knobs (HNSW efSearch, IVF nprobe) to a loaded index."""
  if params.index_type == "hnsw":
    faiss.downcast_index(index).hnsw.efSearch = params.hnsw_ef_search
  elif params.index_type == "ivfpq":
    faiss.extract_index_ivf(index).nprobe = params.ivf_nprobe


def search(index: faiss.Index, queries: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
  """queries: [n, dim] -> (scores [n, k] float32, rows [n, k] int64; -1 where none found)."""
  tune_faiss()
  if len(queries) == 0:
    return np.zeros((0, topk), np.float32), np.zeros((0, topk), np.int64)
  return index.search(np.ascontiguousarray(queries, np.float32), topk)


def save_index(index: faiss.Index, meta: IndexMeta, path: str) -> None:
  """Writes the faiss index to `path` and its metadata to `path + '.meta.json'`."""
  if index.ntotal != meta.count:
    raise ValueError(f"metadata count {meta.count} != index size {index.ntotal}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  faiss.write_index(index, path)
  with open(path + ".meta.json", "w") as f:
    json.dump(dataclasses.asdict(meta), f, indent=1, sort_keys=True)


def read_meta(path: str) -> IndexMeta:
  meta_path = path + ".meta.json"
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"index metadata {meta_path} is missing; rebuild the index with "
                            "`python -m rag_r1_jax.retrieval build`")
  with open(meta_path) as f:
    return IndexMeta(**json.load(f))


def load_index(path: str, encoder_hash: str | None = None, corpus_hash: str | None = None,
               encoder_spec: dict | None = None) -> tuple[faiss.Index, IndexMeta]:
  """Reads an index and its metadata; refuses it when the encoder or corpus hash differs.

  `encoder_spec` (the caller's EncoderSpec as a dict) only makes the refusal say which
  settings differ when the weights are the same but pooling/prefixes/max_length are not.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"index file {path} does not exist")
  meta = read_meta(path)
  if encoder_hash is not None and encoder_hash != meta.encoder_hash:
    diff = {k: (meta.encoder_spec.get(k), v) for k, v in (encoder_spec or {}).items()
            if meta.encoder_spec and meta.encoder_spec.get(k) != v}
    detail = f"; encoder settings differ (index, now): {diff}" if diff else ""
    raise IndexMismatchError(
        f"index {path} was built with encoder {meta.encoder_name!r} (hash {meta.encoder_hash}), "
        f"but the configured encoder has hash {encoder_hash}{detail}; rebuild the index or "
        "point retrieval.encoder_path at the encoder it was built with")
  if corpus_hash is not None and corpus_hash != meta.corpus_hash:
    raise IndexMismatchError(
        f"index {path} was built from corpus {meta.corpus_hash[:16]}, but the configured "
        f"corpus hashes to {corpus_hash[:16]}; rebuild the index or point "
        "retrieval.corpus_path at the corpus it was built from")
  tune_faiss()
  index = faiss.read_index(path)
  if index.ntotal != meta.count or index.d != meta.dim:
    raise IndexMismatchError(f"index {path} holds {index.ntotal} x {index.d} vectors but its "
                             f"metadata says {meta.count} x {meta.dim}")
  return index, meta


def has_meta(path: str) -> bool:
  """Whether `path` is one of our indexes (it has a metadata sidecar)."""
  return os.path.isfile(path + ".meta.json")


def index_kind(index: faiss.Index) -> str:
  """'hnsw', 'ivf' or 'flat' (anything else searched exhaustively, e.g. scalar-quantized)."""
  if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
    return "hnsw"
  try:
    faiss.extract_index_ivf(index)
    return "ivf"
  except RuntimeError:
    return "flat"


def load_foreign_index(path: str, params: IndexParams | None = None) -> faiss.Index:
  """Reads a FAISS index written by another tool, with `params`' HNSW efSearch / IVF nprobe.

  The index type comes from the file, not from `params.index_type`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"index file {path} does not exist")
  tune_faiss()
  try:
    index = faiss.read_index(path)
  except RuntimeError as e:
    raise ValueError(f"{path} is not a FAISS index faiss can read ({str(e).splitlines()[0]})"
                     ) from None
  params = params or IndexParams()
  kind = index_kind(index)
  if kind == "hnsw":
    faiss.downcast_index(index).hnsw.efSearch = params.hnsw_ef_search
  elif kind == "ivf":
    faiss.extract_index_ivf(index).nprobe = params.ivf_nprobe
  return index


def index_bytes(index: faiss.Index) -> int:
  """The serialized size of an index (a close proxy for its resident memory)."""
  return int(faiss.serialize_index(index).size)
