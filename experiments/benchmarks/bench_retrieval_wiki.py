"""Description -> article recall on the Wikipedia extracts: MiniLM dense (flat, HNSW, IVF-PQ) vs BM25.

Each article's short description is a query whose target is the article (title + lead).
The test suite runs this on a 1,004-article subset; this script runs any stride (default:
all 10,033 articles). Embeddings are cached under ~/.cache/rag_r1_jax keyed by encoder hash,
stride and max_length, so a second run only searches.

  python experiments/benchmarks/bench_retrieval_wiki.py --stride 1 --max_length 128
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
from rag_r1_jax import sharding  # noqa: E402
from rag_r1_jax.retrieval import corpus, index as index_lib  # noqa: E402
from rag_r1_jax.retrieval.bm25 import BM25Retriever  # noqa: E402
from rag_r1_jax.retrieval.dense import DenseRetriever  # noqa: E402
from rag_r1_jax.retrieval.docstore import ListDocStore  # noqa: E402


def recall(rows: list[list[str]], targets: list[int], k: int) -> float:
  return float(np.mean([str(t) in r[:k] for r, t in zip(rows, targets)]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stride", type=int, default=1, help="use every stride-th article")
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--devices", type=int, default=8, help="pass as --devices=N")
  parser.add_argument("--report", default="",
                      help="replace the recall section of this report (retrieval_memory.md)")
  args = parser.parse_args()
  enc, mesh = common.minilm_encoder(args.max_length)
  articles = corpus.read_wiki_extracts()[::args.stride]
  docs = corpus.wiki_documents(articles)
  targets = [i for i, a in enumerate(articles) if a.description]
  queries = [articles[i].description for i in targets]
  key = hashlib.sha256(f"{enc.hash}-{args.stride}-{len(docs)}".encode()).hexdigest()[:16]
  cache = os.path.expanduser(f"~/.cache/rag_r1_jax/wiki_emb_{key}.npy")
  if os.path.isfile(cache):
    emb = np.load(cache)
    print(f"loaded cached embeddings {cache}")
  else:
    t0 = time.perf_counter()
    emb = enc.encode_passages([d.contents for d in docs])
    dt = time.perf_counter() - t0
    print(f"encoded {len(docs)} articles in {dt:.1f} s ({len(docs) / dt:.1f} passages/s, "
          f"{sharding.describe(mesh)})")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.save(cache, emb)
  header = (f"{len(queries)} description queries over {len(docs)} articles, MiniLM max_length "
            f"{args.max_length}")
  print(header)
  table = []
  for name, params in {"dense flat": index_lib.IndexParams(),
                       "dense hnsw": index_lib.IndexParams(index_type="hnsw"),
                       "dense ivfpq": index_lib.IndexParams(index_type="ivfpq")}.items():
    index = index_lib.build_index([emb], len(emb), params, progress=False)
    dense = DenseRetriever(enc, index, ListDocStore(docs))
    out = [[d.id for d in r] for r in dense.retrieve(queries, 3)]
    table.append((name, recall(out, targets, 1), recall(out, targets, 3)))
    print(f"  {name:12s} recall@1 {table[-1][1]:.3f}  recall@3 "
          f"{table[-1][2]:.3f}  ({dense.stats.seconds:.2f} s incl. query encoding)")
  t0 = time.perf_counter()
  bm25 = BM25Retriever.from_documents(docs)
  build_s = time.perf_counter() - t0
  out = [[d.id for d in r] for r in bm25.retrieve(queries, 3)]
  table.append(("bm25", recall(out, targets, 1), recall(out, targets, 3)))
  print(f"  {'bm25':12s} recall@1 {table[-1][1]:.3f}  recall@3 "
        f"{table[-1][2]:.3f}  ({bm25.stats.seconds:.2f} s; index {build_s:.1f} s)")
  if args.report:
    write_section(args.report, header, table, args)


def write_section(path: str, header: str, table, args) -> None:
  """Replaces everything after bench_retrieval.WIKI_MARKER in the report with the table."""
  from bench_retrieval import WIKI_MARKER
  old = open(path).read() if os.path.isfile(path) else WIKI_MARKER + "\n"
  if WIKI_MARKER not in old:
    old += "\n" + WIKI_MARKER + "\n"
  lines = [WIKI_MARKER, "", "## Recall on real embeddings", "",
           f"`python experiments/benchmarks/bench_retrieval_wiki.py --stride {args.stride} "
           f"--max_length {args.max_length} --report {path}`:",
           f"{header}; each article's short description is the query, the article the target.",
           "HNSW and IVF-PQ use the default IndexParams (M=32, efSearch=128; nlist=4 sqrt(n),",
           "d/8 sub-quantizers x 8 bits, nprobe=16).", "",
           "| retriever | recall@1 | recall@3 |", "|---|---|---|"]
  lines += [f"| {name} | {r1:.3f} | {r3:.3f} |" for name, r1, r3 in table]
  with open(path, "w") as f:
    f.write(old[:old.index(WIKI_MARKER)] + "\n".join(lines) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
