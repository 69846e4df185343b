"""Passage-encoding throughput: our Flax MiniLM encoder vs PyTorch, same passages, same run.

Both sides see the same passages (Wikipedia lead extracts, with titles) in the same
length-sorted batches; torch pads each batch to its longest member, we pad to power-of-two
buckets. Ours runs data-parallel over a mesh of --devices fake CPU devices (XLA's CPU
backend runs each device on its own thread, which uses the cores better than one device),
and also on a single device for comparison. Prints passages/s for each (median of
--repeats) and the ratios ours / torch.

  python experiments/benchmarks/bench_encoder.py --num_passages 512 --batch_size 64
"""

import argparse
import os
import statistics
import sys
import time

_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from rag_r1_jax import assets, sharding  # noqa: E402
from rag_r1_jax.retrieval import corpus, encoder  # noqa: E402


def torch_encode(model, tokenizer, texts, batch_size, max_length, torch):
  """Length-sorted batches, attention-masked mean pooling, L2 normalisation."""
  lengths = [len(t) for t in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
  order = np.argsort(lengths, kind="stable")
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  with torch.inference_mode():
    for start in range(0, len(texts), batch_size):
      rows = order[start:start + batch_size]
      batch = tokenizer([texts[r] for r in rows], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
      hidden = model(**batch).last_hidden_state
      mask = batch["attention_mask"][..., None].float()
      pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
      out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_passages", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices for the data-parallel mesh (pass as --devices=N)")
  args = parser.parse_args()

  import torch
  from transformers import AutoModel, AutoTokenizer
  torch.set_num_threads(args.threads)
  model_dir = assets.asset_path("minilm_dir")
  articles = corpus.read_wiki_extracts()
  step = max(1, len(articles) // args.num_passages)
  docs = corpus.wiki_documents(articles[::step][:args.num_passages])
  texts = [d.contents for d in docs]

  spec = encoder.infer_spec(model_dir, max_length=args.max_length)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  ours = encoder.SentenceEncoder.from_pretrained(model_dir, spec, mesh=mesh,
                                                 batch_size=args.batch_size)
  single = encoder.SentenceEncoder.from_pretrained(model_dir, spec, batch_size=args.batch_size)
  tok = AutoTokenizer.from_pretrained(model_dir)
  ref = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
  num_tokens = sum(len(t) for t in ours.tokenize(texts))
  print(f"{len(texts)} passages, {num_tokens} tokens (mean {num_tokens / len(texts):.0f}), "
        f"batch {args.batch_size}, max_length {args.max_length}, torch threads {args.threads}, "
        f"{sharding.describe(mesh)}")

  t0 = time.perf_counter()
  ours.encode_passages(texts)
  single.encode_passages(texts)
  print(f"ours: first calls (with compiles) {time.perf_counter() - t0:.2f} s")
  ours_t, single_t, torch_t = [], [], []
  for _ in range(args.repeats):  # interleaved so machine noise hits all sides alike
    t0 = time.perf_counter()
    e_ours = ours.encode_passages(texts)
    ours_t.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    single.encode_passages(texts)
    single_t.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    e_ref = torch_encode(ref, tok, texts, args.batch_size, args.max_length, torch)
    torch_t.append(time.perf_counter() - t0)
  cos = (e_ours * e_ref).sum(axis=1)
  ours_rate = len(texts) / statistics.median(ours_t)
  torch_rate = len(texts) / statistics.median(torch_t)
  single_rate = len(texts) / statistics.median(single_t)
  print(f"ours (mesh)  : {ours_rate:8.1f} passages/s (median of {args.repeats}: "
        f"{[round(t, 2) for t in ours_t]} s)")
  print(f"ours (1 dev) : {single_rate:8.1f} passages/s (median of {args.repeats}: "
        f"{[round(t, 2) for t in single_t]} s)")
  print(f"torch        : {torch_rate:8.1f} passages/s (median of {args.repeats}: "
        f"{[round(t, 2) for t in torch_t]} s)")
  print(f"ratio ours(mesh)/torch: {ours_rate / torch_rate:.2f}x; ours(1 dev)/torch: "
        f"{single_rate / torch_rate:.2f}x; min cosine ours vs torch {cos.min():.6f}")


if __name__ == "__main__":
  main()
