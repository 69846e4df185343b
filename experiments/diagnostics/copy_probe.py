"""Does a synthetic-world policy copy? Per-token loss on the teacher's test trajectories.

For a finished run of configs/rag_r1.py, teacher-forces the exported policy (`<run>/<stage>/model`,
loaded as the run loads it, scored with the training code's `token_logprobs`) on the programmatic teacher's trajectories for test questions (entities
the policy never trained on) and prints the mean loss of the trained tokens by question kind and
by token class: entity-name words and numbers (which the policy can only get right by copying
them from the question or a retrieved passage) and everything else (format). A policy that has
not learned to copy sits near the uniform loss over the name pool (~3 nats) on name words.
Also prints the mean pairwise cosine of the input embeddings of number tokens and name words:
collapsed number embeddings (high cosine) cannot be told apart by a copy circuit.

Usage: python experiments/diagnostics/copy_probe.py --run_dir runs/rag_r1_mq [--stage sft]
       [--mode mq] [--questions 64] [--world_seed 0 --world_entities 240]
"""

import argparse
import collections
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rag_r1_jax.data import prompts  # noqa: E402
from rag_r1_jax.tasks.synthetic_world import teacher  # noqa: E402
from rag_r1_jax.tasks.synthetic_world import world as synthetic_world  # noqa: E402
from rag_r1_jax.retrieval.base import ExactRetriever  # noqa: E402
from rag_r1_jax.runs.stage_files import load_exported_policy  # noqa: E402
from rag_r1_jax.training import logprobs  # noqa: E402
from rag_r1_jax.training.sft import data as sft_data  # noqa: E402


def token_classes(tokenizer, world: synthetic_world.World) -> dict[int, str]:
  """Token id -> 'name' (a name-pool word, with or without its space) or 'number'."""
  out = {}
  words = {w for first, second in world.name_pools.values() for w in (*first, *second)}
  for word in words:
    for text in (word, " " + word):
      ids = tokenizer.encode(text, add_special_tokens=False)
      if len(ids) == 1:
        out[ids[0]] = "name"
  for token, index in tokenizer.get_vocab().items():
    text = tokenizer.convert_tokens_to_string([token]).strip()
    if text.isdigit():
      out[index] = "number"
  return out


def mean_cosine(embeddings: np.ndarray) -> float:
  """Mean pairwise cosine similarity of the rows (diagonal excluded)."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  cos = unit @ unit.T
  n = len(unit)
  return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--stage", default="sft", choices=("sft", "rl"))
  parser.add_argument("--mode", default="mq", choices=("mq", "sq"))
  parser.add_argument("--prompt", default="", help="prompt variant (default short_<mode>)")
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--world_seed", type=int, default=0)
  parser.add_argument("--world_entities", type=int, default=240)
  args = parser.parse_args()

  tokenizer, model, model_dir = load_exported_policy(args.run_dir, args.stage)
  score = nnx.jit(logprobs.token_logprobs)
  world = synthetic_world.make_world(args.world_seed, args.world_entities)
  classes = token_classes(tokenizer, world)
  questions = world.split_questions("test")
  random.Random(0).shuffle(questions)
  retriever = ExactRetriever(world.passages)
  variant = args.prompt or f"short_{args.mode}"

  by_kind, by_class = collections.defaultdict(list), collections.defaultdict(list)
  for question in questions[:args.questions]:
    segments = teacher.teacher_trajectory(world, question, retriever, mode=args.mode, topk=1)
    if segments is None:
      continue
    prompt = prompts.apply_chat_template(tokenizer, prompts.build_prompt(question.question,
                                                                         variant))
    example = sft_data.encode_segments(tokenizer, prompt, segments,
                                       [s.role == "policy" for s in segments])
    tokens = np.asarray(example.tokens, np.int32)[None]  # [1, seq]
    batch = {"tokens": tokens, "positions": np.arange(tokens.shape[1], dtype=np.int32)[None],
             "attention_mask": np.ones_like(tokens)}
    nll = -np.asarray(score(model, batch)[0])[0, 1:]  # [seq - 1]: loss of token t+1
    trained = np.asarray(example.loss_mask[1:]) > 0
    targets = np.asarray(example.tokens[1:])
    by_kind[question.kind].append(float(nll[trained].mean()))
    for loss, target in zip(nll[trained], targets[trained]):
      by_class[classes.get(int(target), "format")].append(float(loss))

  print(f"{model_dir}: mean loss (nats) of trained tokens on {args.questions} test questions")
  for kind, losses in sorted(by_kind.items()):
    print(f"  kind {kind:<11} {np.mean(losses):.3f}  ({len(losses)} trajectories)")
  for name, losses in sorted(by_class.items()):
    print(f"  class {name:<10} {np.mean(losses):.3f}  ({len(losses)} tokens)")
  embed = np.asarray(model.embed[...])
  for name in ("name", "number"):
    ids = [i for i, c in classes.items() if c == name]
    print(f"  {name} embeddings: mean pairwise cosine {mean_cosine(embed[ids]):.3f} "
          f"over {len(ids)} tokens")


if __name__ == "__main__":
  main()
