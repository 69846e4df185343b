"""Slot use and rollout wall time: the sync schedule vs the continuous one, in one run.

A scripted bigram decoder (tests/sampling/toy.py, random layers on top) on a long-tailed
turn-length distribution: a row's prompt ends in a character of a chain of distinct
characters, and greedy decoding walks the chain to its end, so the character sets how many
tokens the row thinks before it acts. Most rows think a few tokens, a tail thinks up to the
chain's length. Then a share of rows answers (`<answer>paris</answer>`), the others search
(`<search>alpha,beta</search>`), read the observation and answer.
Each schedule rolls out `--queue` x slots prompts through `--slots` sampler rows (sync:
chunks of that many rows, each decoded turn by turn; continuous: slots refilled at boundaries
every `--chunk-steps` steps, retrieval on a host thread). The retriever can be given a latency
(`--retrieval-ms`) to stand in for a real index. Trajectories are checked equal row by row.

Then (`--parts world`) the default world's RL rollout (configs/rag_r1.py: its tokenizer,
retriever over the RL draw's passages, rl.batch_size questions x rl.group_size samples at the
config's temperature), the config's initial (random) policy or `--run_dir`'s SFT policy, with
all rows in flight (rollout.rows_in_flight 0) and with `--world-slots`. Sampled draws differ
between schedules (rows consume one key sequence in another order), so only figures compare.

Prints, per schedule: slot use (useful / all decode row-steps, at the batch actually decoded:
a drained continuous rollout moves its last rows into a smaller batch), the same without the
row-steps of slots left empty with no prompt left to admit (the drain), median wall seconds,
retrieval calls, the searches (rows) each call served and its distinct queries (mean, max),
and the speed-up over sync; for the continuous schedule the idle row-steps by cause.
Usage: python experiments/benchmarks/bench_rollout_slots.py [--slots 64 256] [--queue 4]
  [--parts scripted world] [--run_dir runs/rag_r1_mq]
"""

import argparse
import collections
import os
import string
import time

import common  # noqa: F401  (sets sys.path)
import jax
import numpy as np

from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout import engine as engine_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import EOS, bigram_model, toy_tokenizer

# Answer chain (letters) and search chain (digits and punctuation): each character's greedy
# successor is the next one; the last one acts.
ANSWER_CHAIN = list(string.ascii_letters)
SEARCH_CHAIN = list(string.digits + "!#$%&()*+-./;=?@[]^_{|}~")
SUCCESSOR = {**{a: b for a, b in zip(ANSWER_CHAIN, ANSWER_CHAIN[1:] + ["<answer>"])},
             **{a: b for a, b in zip(SEARCH_CHAIN, SEARCH_CHAIN[1:] + ["<search>"])},
             "<search>": "alpha", "alpha": ",", ",": "beta", "beta": "</search>",
             "</information>": "<answer>",
             "<answer>": "paris", "paris": "</answer>"}
DOCS = [Document("d1", "Alpha", "alpha is a letter"), Document("d2", "Beta", "beta follows alpha"),
        Document("d3", "Paris", "paris is a city")]


class SlowRetriever(ExactRetriever):
  """An exact retriever that takes `seconds` per call (a stand-in for a real index's latency)."""

  def __init__(self, docs, seconds: float):
    super().__init__(docs)
    self.seconds = seconds

  def retrieve(self, queries, topk):
    time.sleep(self.seconds)
    return super().retrieve(queries, topk)


def long_tailed_prompts(n: int, seed: int, search_share: float, think: float) -> list[str]:
  """Prompts whose first turns think a geometric number of tokens (mean `think`, capped at the
  chain) before acting: `search_share` of them search, the rest answer."""
  rng = np.random.RandomState(seed)
  prompts = []
  for i in range(n):
    chain = SEARCH_CHAIN if rng.rand() < search_share else ANSWER_CHAIN
    length = min(int(rng.geometric(1 / think)), len(chain))
    prompts.append(f"question {i} {chain[len(chain) - length]}")
  return prompts


def make_engine(tokenizer, model, args, slots: int, schedule: str) -> engine_lib.RolloutEngine:
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=args.capacity,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(EOS)])
  settings = engine_lib.RolloutSettings(
      mode="mq", max_turns=2, max_queries_per_call=3, max_turn_tokens=64,
      max_obs_length=args.obs_tokens, topk=1, rows_in_flight=slots, schedule=schedule,
      decode_chunk_steps=args.chunk_steps)
  return engine_lib.RolloutEngine(sampler, tokenizer,
                                  SlowRetriever(DOCS, args.retrieval_ms / 1000), settings)


def report(label, results: dict, sync_seconds: float) -> None:
  """One line per schedule: slot use, without the drain, seconds, retrieval calls, speed-up."""
  for schedule, (out, seconds) in results.items():
    q = out.retrieval_queries
    searches = sum(r.turns for r in out.records)  # rows served, before deduplication
    useful, total = np.sum(out.decode_row_steps, axis=0)
    drain = out.idle_row_steps.get("free_queue_empty", 0)
    print(f"{label:>7} {schedule:>10} {out.slot_use:>8.3f} {useful / (total - drain):>9.3f} "
          f"{seconds:>8.2f} {len(q):>5} {searches / max(len(q), 1):>13.1f} "
          f"{np.mean(q) if q else 0:>18.1f}, {max(q, default=0):>4} "
          f"{sync_seconds / seconds:>7.2f}x", flush=True)
    if out.idle_row_steps:
      print(" " * 19 + "idle row-steps: " + ", ".join(
          f"{k} {v / total:.3f}" for k, v in out.idle_row_steps.items()))


def timed(engines: dict, prompts, repeats: int, **run_kwargs) -> dict:
  """{schedule: (last rollout, median seconds)}, alternating, after compile rounds: the
  continuous schedule's row counts per boundary follow the retrieval thread's timing, so its
  per-row functions may compile in a later round; rounds repeat (up to 4) until none does."""
  outs = {}

  def rollout(schedule):
    outs[schedule] = engines[schedule].run(prompts, **run_kwargs)

  for _ in range(4):
    before = {s: sampler_lib.compile_count(e.sampler) for s, e in engines.items()}
    for schedule in engines:
      rollout(schedule)
    if all(sampler_lib.compile_count(e.sampler) == before[s] for s, e in engines.items()):
      break
  seconds = common.alternating_medians(
      {s: (lambda s=s: rollout(s)) for s in engines}, repeats)
  return {s: (outs[s], seconds[s]) for s in engines}


HEADER = (f"{'slots':>7} {'schedule':>10} {'slot use':>8} {'w/o drain':>9} {'seconds':>8} "
          f"{'calls':>5} {'searches/call':>13} {'queries/call (mean, max)':>24} {'speed-up':>8}")


def scripted(args) -> None:
  """(b): the long-tailed scripted policy; trajectories checked equal between schedules."""
  tokenizer = toy_tokenizer()
  model = bigram_model(tokenizer, SUCCESSOR, default="<answer>", hidden=args.hidden,
                       layers=args.layers)
  print(f"(b) long-tailed scripted turns: jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"bigram decoder hidden {args.hidden}, {args.layers} layers; {args.queue} prompts per "
        f"slot, chunk {args.chunk_steps} steps, retrieval {args.retrieval_ms:.0f} ms per call",
        flush=True)
  print(HEADER)
  for slots in args.slots:
    prompts = long_tailed_prompts(args.queue * slots, seed=slots, search_share=args.search_share,
                                  think=args.think)
    engines = {s: make_engine(tokenizer, model, args, slots, s) for s in engine_lib.SCHEDULES}
    results = timed(engines, prompts, args.repeats, sampling=SamplingParams(greedy=True))
    (sync, sync_s), (cont, _) = results["sync"], results["continuous"]
    np.testing.assert_array_equal(cont.tokens, sync.tokens)
    # Log-probs to rounding: batches of other sizes may sum in another order.
    np.testing.assert_allclose(cont.sampler_logprobs, sync.sampler_logprobs, atol=1e-6, rtol=0)
    assert [r.finish_reason for r in cont.records] == [r.finish_reason for r in sync.records]
    report(str(slots), results, sync_s)
  turns = [len(r.queries_per_turn) for r in sync.records]
  print(f"last batch: {len(sync.records)} rows, generated tokens per row mean "
        f"{np.mean([r.generated_tokens for r in sync.records]):.1f}, max "
        f"{max(r.generated_tokens for r in sync.records)}; searches per row mean "
        f"{np.mean(turns):.2f}")


def world(args) -> None:
  """(a): the default world's RL rollout (configs/rag_r1.py), one RL step's questions."""
  import dataclasses  # noqa: PLC0415
  import tempfile  # noqa: PLC0415

  from ml_collections import ConfigDict  # noqa: PLC0415

  from configs import rag_r1  # noqa: PLC0415
  from rag_r1_jax import sharding  # noqa: PLC0415
  from rag_r1_jax.runs.workspace import Workspace  # noqa: PLC0415
  config = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  workdir = args.run_dir or os.path.join(tempfile.gettempdir(), "rag_r1_jax_bench_world")
  ws = Workspace(config, mesh, workdir)
  model = ws.files.load_model("sft") if args.run_dir else ws.initial_model()
  if model is None:
    raise FileNotFoundError(f"--run_dir {args.run_dir}: no finished sft stage")
  rl = config.rl
  prompts = ws.prompt_texts(ws.task.rl_rows(0)[:rl.batch_size])
  retriever = ws.rl_retriever(0)
  rows = len(prompts) * rl.group_size
  policy = f"SFT policy of {args.run_dir}" if args.run_dir else "initial (random) policy"
  print(f"(a) default world's RL rollout: {policy}; {len(prompts)} questions x "
        f"{rl.group_size} samples, "
        f"temperature {config.sampling.temperature}, {config.retrieval.backend} retrieval, "
        f"chunk {config.rollout.decode_chunk_steps} steps", flush=True)
  print(HEADER)
  for slots in sorted({config.rollout.rows_in_flight or rows, *args.world_slots}, reverse=True):
    engines = {}
    for schedule in engine_lib.SCHEDULES:
      engines[schedule] = ws.engine(model, retriever)
      engines[schedule].settings = dataclasses.replace(
          engines[schedule].settings, schedule=schedule, rows_in_flight=slots)
    results = timed(engines, prompts, args.repeats,
                    sampling=SamplingParams.from_config(config.sampling), seed=0,
                    group_size=rl.group_size)
    report(str(slots), results, results["sync"][1])
    for schedule, (out, _) in results.items():
      print(" " * 19 + f"{schedule}: generated tokens per row mean "
            f"{np.mean([r.generated_tokens for r in out.records]):.1f}, max "
            f"{max(r.generated_tokens for r in out.records)}; searches per row "
            f"{np.mean([r.turns for r in out.records]):.2f}; finish "
            f"{dict(collections.Counter(r.finish_reason for r in out.records))}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--parts", nargs="+", choices=("scripted", "world"),
                      default=["scripted", "world"])
  parser.add_argument("--slots", type=int, nargs="+", default=[64, 256])
  parser.add_argument("--queue", type=int, default=4, help="prompts per slot")
  parser.add_argument("--chunk-steps", type=int, default=8)
  parser.add_argument("--think", type=float, default=16.0, help="mean thinking tokens")
  parser.add_argument("--search-share", type=float, default=0.3)
  parser.add_argument("--retrieval-ms", type=float, default=10.0)
  parser.add_argument("--obs-tokens", type=int, default=16, help="rollout.max_obs_length")
  parser.add_argument("--capacity", type=int, default=256)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--run_dir", default="", help="world: a run whose sft policy to roll out")
  parser.add_argument("--world-slots", type=int, nargs="*", default=[64],
                      help="world: slot counts besides all rows in flight")
  args = parser.parse_args()
  if "scripted" in args.parts:
    scripted(args)
  if "world" in args.parts:
    world(args)


if __name__ == "__main__":
  main()
