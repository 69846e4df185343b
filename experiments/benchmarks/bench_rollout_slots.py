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

Prints, per schedule: slot use (useful / all decode row-steps), median wall seconds,
retrieval calls, the searches (rows) each call served and its distinct queries (every row
here asks the same two, so that column is 2), and the speed-up over sync.
Usage: python experiments/benchmarks/bench_rollout_slots.py [--slots 64 256] [--queue 4]
"""

import argparse
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
      max_obs_length=args.obs_tokens, topk=1, rows_in_flight=slots, schedule=schedule, decode_chunk_steps=args.chunk_steps)
  return engine_lib.RolloutEngine(sampler, tokenizer,
                                  SlowRetriever(DOCS, args.retrieval_ms / 1000), settings)


def main():
  parser = argparse.ArgumentParser()
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
  args = parser.parse_args()
  tokenizer = toy_tokenizer()
  model = bigram_model(tokenizer, SUCCESSOR, default="<answer>", hidden=args.hidden,
                       layers=args.layers)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; bigram decoder hidden "
        f"{args.hidden}, {args.layers} layers; {args.queue} prompts per slot, chunk "
        f"{args.chunk_steps} steps, retrieval {args.retrieval_ms:.0f} ms per call", flush=True)
  print(f"{'slots':>5} {'schedule':>10} {'slot use':>8} {'seconds':>8} {'calls':>5} "
        f"{'searches/call':>13} {'queries/call (mean, max)':>24} {'speed-up':>8}")
  for slots in args.slots:
    prompts = long_tailed_prompts(args.queue * slots, seed=slots, search_share=args.search_share,
                                  think=args.think)
    engines = {s: make_engine(tokenizer, model, args, slots, s) for s in engine_lib.SCHEDULES}
    outs = {}

    def rollout(schedule):
      outs[schedule] = engines[schedule].run(prompts, sampling=SamplingParams(greedy=True))

    for schedule in engines:  # a second compile round: retrieval timing varies the row counts
      rollout(schedule)
    seconds = common.alternating_medians(
        {s: (lambda s=s: rollout(s)) for s in engines}, args.repeats)
    results = {s: (outs[s], seconds[s]) for s in engines}
    (sync, sync_s), (cont, cont_s) = results["sync"], results["continuous"]
    np.testing.assert_array_equal(cont.tokens, sync.tokens)
    assert [r.finish_reason for r in cont.records] == [r.finish_reason for r in sync.records]
    for schedule, (out, seconds) in results.items():
      q = out.retrieval_queries
      searches = sum(r.turns for r in out.records)  # rows served, before deduplication
      print(f"{slots:>5} {schedule:>10} {out.slot_use:>8.3f} {seconds:>8.2f} {len(q):>5} "
            f"{searches / max(len(q), 1):>13.1f} "
            f"{np.mean(q) if q else 0:>18.1f}, {max(q, default=0):>4} "
            f"{sync_s / seconds:>7.2f}x", flush=True)
  turns = [len(r.queries_per_turn) for r in sync.records]
  print(f"last batch: {len(sync.records)} rows, generated tokens per row mean "
        f"{np.mean([r.generated_tokens for r in sync.records]):.1f}, max "
        f"{max(r.generated_tokens for r in sync.records)}; searches per row mean "
        f"{np.mean(turns):.2f}")


if __name__ == "__main__":
  main()
