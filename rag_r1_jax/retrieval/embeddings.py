"""Resumable corpus encoding: passage embeddings written to disk in fixed-size chunks.

`encode_corpus` writes `chunk_000000.npy`, ... under a directory with a `manifest.json`
(encoder hash, corpus fingerprint, rows, chunk size). Re-running it skips chunks already on
disk, so a 21M-passage encode interrupted after hours resumes where it stopped. A chunk is
written to a temporary name and renamed, so a killed run never leaves a half chunk.
"""

import json
import os
from typing import Iterator

import numpy as np
import tqdm

from rag_r1_jax.retrieval.docstore import DocStore
from rag_r1_jax.retrieval.encoder import SentenceEncoder

MANIFEST = "manifest.json"
_READ_ROWS = 4096  # passages read from the corpus and tokenised at once


def _chunk_path(out_dir: str, i: int) -> str:
  return os.path.join(out_dir, f"chunk_{i:06d}.npy")


def _manifest(encoder: SentenceEncoder, docs: DocStore, chunk_rows: int) -> dict:
  return {"encoder_name": encoder.name, "encoder_hash": encoder.hash, "dim": encoder.dim,
          "corpus_hash": docs.fingerprint, "rows": len(docs), "chunk_rows": chunk_rows}


def encode_corpus(encoder: SentenceEncoder, docs: DocStore, out_dir: str,
                  chunk_rows: int = 65536, progress: bool = True) -> dict:
  """Encodes every passage's contents (with the passage prefix) into chunks; returns the manifest.

  Refuses to resume into a directory written for another encoder, corpus or chunk size.
  """
  if chunk_rows < 1:
    raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
  os.makedirs(out_dir, exist_ok=True)
  manifest = _manifest(encoder, docs, chunk_rows)
  manifest_path = os.path.join(out_dir, MANIFEST)
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    if old != manifest:
      diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
      raise ValueError(f"embedding directory {out_dir} holds chunks for another setup "
                       f"(was, now): {diff}; use an empty directory")
  else:
    with open(manifest_path, "w") as f:
      json.dump(manifest, f, indent=1)
  num_chunks = -(-len(docs) // chunk_rows)
  done = [i for i in range(num_chunks) if os.path.isfile(_chunk_path(out_dir, i))]
  bar = tqdm.tqdm(total=len(docs), unit="passage", desc=f"encode {encoder.name}",
                  disable=not progress)
  bar.update(sum(min(chunk_rows, len(docs) - i * chunk_rows) for i in done))

  def report(finished: int, status: str) -> None:
    """The encoder's progress: the bar moves per batch; tokenising / compiling show beside it.

    The last batch only counts: `bar.close()` draws the final line, once."""
    bar.set_postfix_str(status, refresh=False)
    if bar.n + finished >= bar.total:
      bar.n += finished
    elif finished:
      bar.update(finished)
    else:
      bar.refresh()

  for i in range(num_chunks):
    path = _chunk_path(out_dir, i)
    if os.path.isfile(path):
      continue
    rows = range(i * chunk_rows, min((i + 1) * chunk_rows, len(docs)))
    emb = np.zeros((len(rows), encoder.dim), np.float32)  # [rows, dim]
    for start in range(0, len(rows), _READ_ROWS):
      batch = docs.get(rows[start:start + _READ_ROWS])
      emb[start:start + len(batch)] = encoder.encode_passages([d.contents for d in batch],
                                                              report if progress else None)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      np.save(f, emb)
    os.replace(tmp, path)
  bar.close()
  return manifest


def read_manifest(out_dir: str) -> dict:
  with open(os.path.join(out_dir, MANIFEST)) as f:
    return json.load(f)


def iter_chunks(out_dir: str) -> Iterator[np.ndarray]:
  """The [rows, dim] float32 chunks of a finished encode, in row order."""
  manifest = read_manifest(out_dir)
  num_chunks = -(-manifest["rows"] // manifest["chunk_rows"])
  for i in range(num_chunks):
    path = _chunk_path(out_dir, i)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing: the encode in {out_dir} did not finish; "
                              "re-run it to resume")
    yield np.load(path)
