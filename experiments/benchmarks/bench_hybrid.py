"""Recall@k of dense (MiniLM, flat), BM25 and hybrid (RRF, weighted) retrieval, in one run.

The question set comes from the packaged Wikipedia extracts (retrieval.evaluation.wiki_questions):
each distinct short description is a query, and its gold documents are the articles that carry
it (title + lead, one document per article). All retrievers answer the same questions over the
same documents; the hybrids fuse the very dense and BM25 lists printed above them. Passage
embeddings are cached under ~/.cache/rag_r1_jax keyed by encoder hash and article subset.

  python experiments/benchmarks/bench_hybrid.py --stride 1 --max_length 128
"""

import argparse
import hashlib
import os
import sys
import time

_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

import common  # noqa: E402
from rag_r1_jax.retrieval import corpus, evaluation, fusion  # noqa: E402
from rag_r1_jax.retrieval import index as index_lib  # noqa: E402
from rag_r1_jax.retrieval.bm25 import BM25Retriever  # noqa: E402
from rag_r1_jax.retrieval.dense import DenseRetriever  # noqa: E402
from rag_r1_jax.retrieval.docstore import ListDocStore  # noqa: E402
from rag_r1_jax.retrieval.hybrid import HybridRetriever  # noqa: E402

KS = (1, 3, 5)


def passage_embeddings(enc, docs, stride: int) -> np.ndarray:
  """[n, dim] embeddings of the documents, from the cache when this subset was encoded before."""
  key = hashlib.sha256(f"{enc.hash}-{stride}-{len(docs)}".encode()).hexdigest()[:16]
  cache = os.path.expanduser(f"~/.cache/rag_r1_jax/wiki_emb_{key}.npy")
  if os.path.isfile(cache):
    print(f"loaded cached embeddings {cache}")
    return np.load(cache)
  t0 = time.perf_counter()
  emb = enc.encode_passages([d.contents for d in docs])
  print(f"encoded {len(docs)} articles in {time.perf_counter() - t0:.1f} s")
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  np.save(cache, emb)
  return emb


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stride", type=int, default=1, help="use every stride-th article")
  parser.add_argument("--max_length", type=int, default=128, help="encoder tokens per text")
  parser.add_argument("--depth", type=int, default=20, help="candidates per retriever fused")
  parser.add_argument("--rrf_k", type=float, default=60.0)
  parser.add_argument("--devices", type=int, default=8, help="pass as --devices=N")
  args = parser.parse_args()
  enc, _ = common.minilm_encoder(args.max_length)
  articles = corpus.read_wiki_extracts()[::args.stride]
  docs = ListDocStore(corpus.wiki_documents(articles))
  questions = evaluation.wiki_questions(articles, [[d.id] for d in docs.documents])
  emb = passage_embeddings(enc, docs.documents, args.stride)
  index = index_lib.build_index([emb], len(emb), index_lib.IndexParams(), progress=False)
  dense = DenseRetriever(enc, index, docs)
  bm25 = BM25Retriever.from_docstore(docs)
  retrievers = {
      "dense": dense, "bm25": bm25,
      "hybrid rrf": HybridRetriever(dense, bm25, fusion.FusionParams(
          method="rrf", rrf_k=args.rrf_k, depth=args.depth)),
      "hybrid weighted": HybridRetriever(dense, bm25, fusion.FusionParams(
          method="weighted", depth=args.depth)),
  }
  multi = sum(len(q.gold_ids) > 1 for q in questions)
  print(f"{len(questions)} questions (short descriptions; {multi} shared by several articles, "
        f"all of them gold) over {len(docs)} articles; MiniLM max_length {args.max_length}, "
        f"fusion depth {args.depth}, rrf_k {args.rrf_k:g}, weights 1:1")
  queries = [q.question for q in questions]
  table = {}
  for name, retriever in retrievers.items():
    t0 = time.perf_counter()
    results = retriever.retrieve(queries, max(KS))
    seconds = time.perf_counter() - t0
    table[name] = evaluation.recall_at_k(questions, results, KS)
    cells = "  ".join(f"recall@{k} {table[name][f'gold_recall@{k}']:.4f}" for k in KS)
    print(f"  {name:16s} {cells}  ({seconds:.2f} s, one batched call)")
  best_single = max(table["dense"]["gold_recall@3"], table["bm25"]["gold_recall@3"])
  for name in ("hybrid rrf", "hybrid weighted"):
    print(f"{name} recall@3 - best single retriever: "
          f"{table[name]['gold_recall@3'] - best_single:+.4f}")


if __name__ == "__main__":
  main()
