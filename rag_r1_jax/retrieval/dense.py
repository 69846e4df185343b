"""Dense retrieval: a sentence encoder, a FAISS index and a document store behind `retrieve`.

Indexes come from `build_dense_index` (with metadata that ties them to their encoder and
corpus) or from Search-R1 / FlashRAG (`e5_Flat.index` over a `{id, contents}` corpus), which
load as they are: row i of the index is row i of the corpus, and the corpus's byte offsets
are built once and cached next to it.
"""

import contextlib
import dataclasses
import os
import sys
from typing import Sequence

from rag_r1_jax.retrieval import index as index_lib  # first: it loads faiss (OMP_WAIT_POLICY)

import faiss  # noqa: E402,I001
import numpy as np
import tqdm

from rag_r1_jax import timing
from rag_r1_jax.retrieval import embeddings as embeddings_lib
from rag_r1_jax.retrieval.base import Document, RowRetriever
from rag_r1_jax.retrieval.docstore import (DocStore, JsonlDocStore, ListDocStore,
                                            corpus_docstore)
from rag_r1_jax.retrieval.encoder import SentenceEncoder


def docstore_path(index_path: str) -> str:
  """Where the corpus byte offsets of an index built from a JSONL file are kept."""
  return index_path + ".docs.npy"


class DenseRetriever(RowRetriever):
  """Encodes the batch of queries once, searches the index once, reads the hits' documents."""

  def __init__(self, encoder: SentenceEncoder, index: faiss.Index, docs: DocStore):
    super().__init__()
    if index.ntotal != len(docs):
      raise ValueError(f"index has {index.ntotal} vectors but the corpus has {len(docs)} rows")
    if index.d != encoder.dim:
      raise ValueError(f"index dimension {index.d} != encoder dimension {encoder.dim}")
    self.encoder = encoder
    self.index = index
    self.docs = docs

  @classmethod
  def from_documents(cls, encoder: SentenceEncoder, documents: Sequence[Document],
                     params: index_lib.IndexParams = index_lib.IndexParams(),
                     progress: bool = False) -> "DenseRetriever":
    """Encodes a list of Documents in memory and indexes them (small corpora, tests)."""
    docs = ListDocStore(documents)
    texts = [d.contents for d in docs.documents]
    with encoding_bar(encoder, len(texts), progress) as report:
      emb = encoder.encode_passages(texts, report)  # [n, dim]
    index = index_lib.build_index([emb], len(emb), params, progress=progress)
    return cls(encoder, index, docs)

  @classmethod
  def load(cls, encoder: SentenceEncoder, index_path: str, corpus_path: str,
           params: index_lib.IndexParams | None = None) -> "DenseRetriever":
    """Loads a saved index and its corpus; refuses a mismatched encoder or corpus.

    An index without our metadata (Search-R1's, FlashRAG's) loads with `load_foreign`.
    """
    if not os.path.isfile(index_path):
      raise FileNotFoundError(f"retrieval.index_path {index_path} does not exist; build it "
                              "with `python -m rag_r1_jax.retrieval build`")
    if not index_lib.has_meta(index_path):
      return cls.load_foreign(encoder, index_path, corpus_path, params)
    docs = JsonlDocStore.load(docstore_path(index_path), corpus_path)
    index, meta = index_lib.load_index(index_path, encoder.hash, docs.fingerprint,
                                       dataclasses.asdict(encoder.spec))
    if params is not None:
      if params.index_type != meta.index_type:
        raise ValueError(f"retrieval.index_type is {params.index_type!r} but {index_path} is a "
                         f"{meta.index_type!r} index")
      index_lib.set_search_params(index, params)
    return cls(encoder, index, docs)

  @classmethod
  def load_foreign(cls, encoder: SentenceEncoder, index_path: str, corpus_path: str,
                   params: index_lib.IndexParams | None = None) -> "DenseRetriever":
    """An index built by Search-R1 or FlashRAG over `corpus_path`, without re-encoding.

    Only the sizes can be checked: the index must hold one vector per corpus row, in file
    order, of the encoder's dimension. Which encoder built it cannot be checked; it must be
    the configured one, with the same prefixes (retrieval.query_prefix; e5's "query: " and
    bge's instruction are set from the encoder's name).
    """
    index = index_lib.load_foreign_index(index_path, params)
    docs = corpus_docstore(corpus_path)
    if index.ntotal != len(docs):
      raise index_lib.IndexMismatchError(
          f"index {index_path} holds {index.ntotal} vectors but corpus {corpus_path} has "
          f"{len(docs)} rows; an index built elsewhere needs the exact corpus it was built "
          "from (one vector per row, in file order): check retrieval.corpus_path")
    if index.d != encoder.dim:
      raise index_lib.IndexMismatchError(
          f"index {index_path} holds {index.d}-dimensional vectors but encoder "
          f"{encoder.name!r} makes {encoder.dim}-dimensional ones; point "
          "retrieval.encoder_path at the encoder that built the index")
    print(f"retrieval: {index_path} has no {os.path.basename(index_path)}.meta.json; loaded "
          f"as an index built elsewhere ({index_lib.index_kind(index)}, {index.ntotal} x "
          f"{index.d}) over {corpus_path}, queried with encoder {encoder.name!r} "
          f"(query prefix {encoder.spec.query_prefix!r})", file=sys.stderr, flush=True)
    return cls(encoder, index, docs)

  def search_rows(self, queries: Sequence[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
    """One encode and one index search -> (scores [n, k] float32, rows [n, k] int64; -1 where
    none found)."""
    q = self.encoder.encode_queries(queries)  # [n, dim]
    return index_lib.search(self.index, q, topk)


@contextlib.contextmanager
def encoding_bar(encoder: SentenceEncoder, count: int, progress: bool):
  """Yields the progress callback of `encoder.encode` for `count` passages: a line with the
  expected size, then a tqdm bar moving per batch with what runs beside it (tokenising,
  compiling a new shape). Yields None when `progress` is False."""
  if not progress:
    yield None
    return
  timing.say(f"retrieval: encoding {count} passages with {encoder.name} (batches of "
             f"{encoder.batch_size}, up to {encoder.spec.max_length} tokens; one compilation "
             "per new batch shape)")
  bar = tqdm.tqdm(total=count, unit="passage", desc=f"encode {encoder.name}")

  def report(finished: int, status: str) -> None:
    bar.set_postfix_str(status, refresh=False)
    if finished:
      bar.update(finished)
    else:
      bar.refresh()

  try:
    yield report
  finally:
    bar.close()


def build_dense_index(encoder: SentenceEncoder, corpus_path: str, index_path: str,
                      params: index_lib.IndexParams = index_lib.IndexParams(),
                      work_dir: str | None = None, chunk_rows: int = 65536,
                      bad_rows_report: str | None = None, progress: bool = True
                      ) -> index_lib.IndexMeta:
  """Corpus JSONL -> offsets + resumable embeddings (in work_dir) -> saved index with metadata.

  `work_dir` keeps the embedding chunks so an interrupted build resumes; by default it is
  `index_path + '.emb'`.
  """
  docs = JsonlDocStore.build(corpus_path, bad_rows_report)
  if len(docs) == 0:
    raise ValueError(f"corpus {corpus_path} has no rows")
  work_dir = work_dir or index_path + ".emb"
  embeddings_lib.encode_corpus(encoder, docs, work_dir, chunk_rows, progress)
  index = index_lib.build_index(embeddings_lib.iter_chunks(work_dir), len(docs), params,
                                progress=progress)
  meta = index_lib.IndexMeta(encoder_name=encoder.name, encoder_hash=encoder.hash,
                             dim=encoder.dim, corpus_hash=docs.fingerprint,
                             index_type=params.index_type, count=len(docs), fp16=params.fp16,
                             params=dataclasses.asdict(params),
                             encoder_spec=dataclasses.asdict(encoder.spec))
  index_lib.save_index(index, meta, index_path)
  docs.save(docstore_path(index_path))
  docs.close()
  return meta

