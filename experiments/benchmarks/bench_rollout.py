"""Multi-turn rollout time: the cache-reusing engine vs re-prefilling every row's history.

A scripted bigram decoder (tests/sampling/toy.py, random layers on top) searches on every
turn: a few "thinking" tokens, `<search>alpha,beta</search>`, then an ~300-token observation
is appended; after `--turns` searches the budget notice ends the rollout. Both engines run the
same greedy rollouts in the same process (checked token for token); the baseline
(`ReprefillEngine` below) prefills each resumed row's whole sequence again
instead of only its observation. Prints median seconds, the ratio and prefill token counts.
Usage: python experiments/benchmarks/bench_rollout.py [--batch 8] [--turns 4] [--repeats 3]
"""

import argparse
import time

import common  # noqa: F401  (sets sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout import engine as engine_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import EOS, bigram_model, toy_tokenizer

# Prompt "Q:" -> "Let me think.<search>alpha,beta</search>"; after each observation the same.
THINK = list("Let me think.")
SUCCESSOR = {"Q:": THINK[0], "</information>": THINK[0],
             **{a: b for a, b in zip(THINK, THINK[1:] + ["<search>"])},
             "<search>": "alpha", "alpha": ",", ",": "beta", "beta": "</search>"}
FILLER = "this passage has many words about the letters that the toy corpus describes. "
DOCS = [Document("d1", "Alpha", "alpha is a letter; " + FILLER * 3),
        Document("d2", "Beta", "beta follows alpha; " + FILLER * 3)]


class ReprefillEngine(engine_lib.RolloutEngine):
  """The baseline without cache reuse: each resumed row re-prefills its whole history.

  A resumed row's cache length is reset to 0 (a fresh cache: attention never reads past a
  row's length) and its tokens so far plus the observation are appended in one prefill.
  The per-token log-probs and generated flags of earlier turns are restored afterwards, so
  the trajectories equal the cache-reusing engine's; only the prefill work differs.
  """

  def _resume(self, state, chunks):
    host = self.sampler.fetch(state)
    saved = (jnp.copy(state.logprobs), jnp.copy(state.generated))  # `append` donates state
    resumed = np.array([c is not None for c in chunks])
    lengths = jax.device_put(np.where(resumed, 0, host["lengths"]).astype(np.int32),
                             state.cache.lengths.sharding)
    state = state.replace(cache=state.cache.replace(lengths=lengths))
    full = [host["tokens"][b, :host["lengths"][b]].tolist() + list(c) if c is not None else None
            for b, c in enumerate(chunks)]
    state = self.sampler.append(state, full)
    return state.replace(logprobs=saved[0], generated=saved[1])


def make_engine(tokenizer, model, args, reprefill: bool) -> engine_lib.RolloutEngine:
  """An engine over a fresh Sampler; `reprefill` selects the baseline."""
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=args.capacity,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(EOS)])
  settings = engine_lib.RolloutSettings(mode="mq", max_turns=args.turns, max_queries_per_call=3,
                                        max_turn_tokens=64, max_obs_length=args.obs_tokens // 2,
                                        topk=1)
  engine = ReprefillEngine if reprefill else engine_lib.RolloutEngine
  return engine(sampler, tokenizer, ExactRetriever(DOCS), settings)


def timed_runs(engine, prompts, repeats: int):
  """Median seconds over `repeats` runs after a compile run; prefill tokens of one run."""
  out = engine.run(prompts, sampling=SamplingParams(greedy=True))
  times = []
  for _ in range(repeats):
    before = engine.sampler.prefill_tokens
    start = time.perf_counter()
    out = engine.run(prompts, sampling=SamplingParams(greedy=True))
    times.append(time.perf_counter() - start)
    prefill = engine.sampler.prefill_tokens - before
  return float(np.median(times)), prefill, out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--turns", type=int, default=4)
  parser.add_argument("--obs-tokens", type=int, default=300)
  parser.add_argument("--capacity", type=int, default=2048)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  tokenizer = toy_tokenizer()
  model = bigram_model(tokenizer, SUCCESSOR, default=THINK[0], hidden=args.hidden,
                       layers=args.layers)
  prompts = [f"question {i} Q:" for i in range(args.batch)]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; bigram decoder hidden "
        f"{args.hidden}, {args.layers} layers; batch {args.batch}, {args.turns} searches, "
        f"capacity {args.capacity}", flush=True)
  results = {}
  for name, reprefill in (("cache reuse", False), ("re-prefill", True)):
    results[name] = timed_runs(make_engine(tokenizer, model, args, reprefill), prompts,
                               args.repeats)
  reuse, again = results["cache reuse"], results["re-prefill"]
  np.testing.assert_array_equal(reuse[2].tokens, again[2].tokens)
  np.testing.assert_array_equal(reuse[2].loss_mask, again[2].loss_mask)
  record = reuse[2].records[0]
  observed = record.total_tokens - record.prompt_tokens - record.generated_tokens
  print(f"row 0: {record.turns} searches, finish {record.finish_reason}, {record.total_tokens} "
        f"tokens ({record.prompt_tokens} prompt, {record.generated_tokens} generated, "
        f"{observed} observation)")
  for name, (seconds, prefill, _) in results.items():
    print(f"{name:12s}: {seconds:7.3f} s median, {prefill:6d} prefill tokens per rollout batch")
  print(f"ratio re-prefill / cache reuse: {again[0] / reuse[0]:.2f}x time, "
        f"{again[1] / reuse[1]:.2f}x prefill tokens; same tokens and loss masks: yes", flush=True)


if __name__ == "__main__":
  main()
