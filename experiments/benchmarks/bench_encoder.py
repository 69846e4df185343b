"""Passage-encoding throughput: our Flax MiniLM encoder vs sentence-transformers, same passages.

Both encode the same passages (every --stride-th Wikipedia lead extract, with its title; 502
at the default stride) with MiniLM's own settings (mean pooling, normalised, 256 tokens).
sentence-transformers' `encode` sorts by length and pads each batch to its longest member;
ours sorts by token count and pads each batch to the next multiple of --seq_bucket tokens.
Ours runs on one device and data-parallel over a mesh of --devices fake CPU devices (XLA's CPU
backend runs each device on its own thread). Everything is warmed up first (compiles
excluded), then the sides alternate --repeats times so machine noise hits all alike. Prints
passages/s (median), the ratios ours / sentence-transformers and the embeddings' agreement
(cosine, and each passage's 5 nearest other passages under both).

  pip install -r requirements-bench.txt   # sentence-transformers, once
  python experiments/benchmarks/bench_encoder.py --devices=2 --threads 2
"""

import argparse
import os
import statistics
import sys
import time

_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "2")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from rag_r1_jax import assets, sharding  # noqa: E402
from rag_r1_jax.retrieval import corpus, encoder  # noqa: E402


def timed(fn) -> tuple[float, np.ndarray]:
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stride", type=int, default=20, help="every stride-th article")
  parser.add_argument("--batch_size", type=int, default=64, help="both sides' batch")
  parser.add_argument("--seq_bucket", type=int, default=16, help="ours: pad to this multiple")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--devices", type=int, default=2,
                      help="fake CPU devices for the data-parallel mesh (pass as --devices=N)")
  args = parser.parse_args()

  import torch
  from sentence_transformers import SentenceTransformer
  torch.set_num_threads(args.threads)
  model_dir = assets.asset_path("minilm_dir")
  texts = [d.contents for d in corpus.wiki_documents(corpus.read_wiki_extracts()[::args.stride])]
  st = SentenceTransformer(model_dir, device="cpu")
  spec = encoder.infer_spec(model_dir)
  assert spec.max_length == st.max_seq_length, (spec, st.max_seq_length)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  ours = {
      f"ours ({sharding.describe(mesh)})": encoder.SentenceEncoder.from_pretrained(
          model_dir, spec, mesh=mesh, batch_size=args.batch_size, seq_bucket=args.seq_bucket),
      "ours (1 device)": encoder.SentenceEncoder.from_pretrained(
          model_dir, spec, batch_size=args.batch_size, seq_bucket=args.seq_bucket)}
  lengths = np.array([len(t) for t in next(iter(ours.values())).tokenize(texts)])
  print(f"{len(texts)} passages, {lengths.sum()} tokens (mean {lengths.mean():.0f}, p90 "
        f"{np.percentile(lengths, 90):.0f}), batch {args.batch_size}, max_length "
        f"{spec.max_length}, seq_bucket {args.seq_bucket}, torch threads {args.threads}")

  sides = {name: (lambda e=e: e.encode_passages(texts)) for name, e in ours.items()}
  sides["sentence-transformers"] = lambda: st.encode(texts, batch_size=args.batch_size,
                                                     convert_to_numpy=True)
  warm = {name: timed(fn)[0] for name, fn in sides.items()}
  print("first calls (ours compile): " + ", ".join(f"{n} {s:.1f} s" for n, s in warm.items()))
  seconds: dict[str, list[float]] = {name: [] for name in sides}
  outputs = {}
  for _ in range(args.repeats):
    for name, fn in sides.items():
      s, outputs[name] = timed(fn)
      seconds[name].append(s)
  rates = {name: len(texts) / statistics.median(s) for name, s in seconds.items()}
  for name, rate in rates.items():
    print(f"{name:28s}: {rate:7.1f} passages/s (median of {args.repeats}: "
          f"{[round(t, 2) for t in seconds[name]]} s)")
  ref = outputs["sentence-transformers"]
  top = lambda e: np.argsort(-(e @ e.T), axis=1, kind="stable")[:, 1:6]  # each passage's top 5
  for name in ours:
    ratio = rates[name] / rates["sentence-transformers"]
    cos = (outputs[name] * ref).sum(axis=1)
    same = (top(outputs[name]) == top(ref)).all(axis=1).sum()
    print(f"ratio {name} / sentence-transformers: {ratio:.2f}x (min cosine {cos.min():.7f}, "
          f"max |diff| {np.abs(outputs[name] - ref).max():.1e}, top-5 neighbours identical "
          f"for {same}/{len(texts)} passages)")


if __name__ == "__main__":
  main()
