"""Can a synthetic-world policy pick the winner of a comparison? Teacher-forced answer choices.

For a finished run of configs/rag_r1.py, feeds the exported policy the context of a correct
answer up to `<answer>` and reads its next-token logits twice:
  first word   which candidate's first name word scores highest (chance: 1 / candidates);
  whole name   given that first word, whether the second word scoring highest among the
               candidates' second words is the one of the same name (a "mixed" answer when not).
Contexts come from fresh decision drills (`teacher.decision_drills`: the question and the
thought with every value, the SFT format of `world.decision_drills`) and from the teacher's
trajectories for the test comparison and fan-out questions (the run's prompt, exact retrieval).
Questions whose candidates' words start with the same token are skipped (ambiguous choice).

Usage: python experiments/diagnostics/decision_probe.py --run_dir runs/rag_r1_mq [--stage sft]
       [--drills 400] [--mode mq] [--world_seed 0 --world_entities 240]
"""

import argparse
import collections
import dataclasses
import os
import sys
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from rag_r1_jax.data import prompts  # noqa: E402
from rag_r1_jax.tasks.synthetic_world import teacher  # noqa: E402
from rag_r1_jax.tasks.synthetic_world import world as synthetic_world  # noqa: E402
from rag_r1_jax.tasks.demonstrations import Segment, trajectory_text  # noqa: E402
from rag_r1_jax.retrieval.base import ExactRetriever  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Item:
  """One answer to probe: the text before `<answer>` and the candidates."""
  group: tuple  # (source, attribute, number of candidates)
  context: str  # chat-templated prompt + response up to the answer's thought, inclusive
  names: tuple[str, ...]
  winner: str


def drill_items(world: synthetic_world.World, count: int, seed: int,
                template: Callable[[str], str]) -> list[Item]:
  """Items from fresh decision drills (the user text through `template`, then the thought)."""
  out = []
  for user, (thought, answer) in teacher.decision_drills(world, count, seed):
    question = user.removeprefix("Decide: ")
    names = tuple(" ".join(fact.split(" ")[:2])
                  for fact in thought.text.removeprefix("<think> ").split("; "))
    [key] = [k for k, (_, _, pair, fan) in synthetic_world.COMPARISONS.items()
             if question == (pair if len(names) == 2 else fan).format(*names)]
    winner = answer.text.removeprefix("<answer> ").removesuffix(" </answer>")
    out.append(Item(("drill", key, len(names)), template(user) + thought.text, names, winner))
  return out


def question_items(world: synthetic_world.World, template: Callable[[str], str], *,
                   mode: str, prompt_variant: str, json_indent: int) -> list[Item]:
  """Items from the teacher's trajectories for the test comparison and fan-out questions."""
  retriever = ExactRetriever(world.passages)
  out = []
  for q in world.split_questions("test", ["comparison", "fanout"]):
    segments = teacher.teacher_trajectory(world, q, retriever, mode=mode, topk=1,
                                          json_indent=json_indent)
    if segments is None:
      continue
    thought = segments[-1].text.split("<answer>")[0]
    context = template(prompts.build_prompt(q.question, prompt_variant))
    context += trajectory_text(segments[:-1] + [Segment(thought, "policy")])
    names = tuple(lk.entity for rnd in q.plan for lk in rnd)
    out.append(Item((q.kind, q.plan[0][0].attribute, len(names)), context, names,
                    q.golden_answers[0]))
  return out


def probe(items: Sequence[Item], encode: Callable[[str], list[int]],
          next_logits: Callable[[list[int]], np.ndarray]) -> dict[tuple, collections.Counter]:
  """Per group: n, first_right (winner's first word on top), whole (second word of that name).

  `encode(text)` gives token ids without special tokens; `next_logits(ids)` the logits of the
  token after `ids`. Names are two words; a word is chosen by its first token.
  """
  out: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
  for item in items:
    words = [[encode(" " + w) for w in name.split(" ")] for name in item.names]
    firsts, seconds = [w[0][0] for w in words], [w[1][0] for w in words]  # words' first tokens
    if len(set(firsts)) < len(firsts) or len(set(seconds)) < len(seconds):
      continue  # candidates whose words start alike: the choice is ambiguous
    ids = encode(item.context + "<answer>")
    pick = int(np.argmax(next_logits(ids)[firsts]))
    second = int(np.argmax(next_logits(ids + words[pick][0])[seconds]))
    counts = out[item.group]
    counts["n"] += 1
    counts["first_right"] += int(item.names[pick] == item.winner)
    counts["whole"] += int(second == pick)
  return dict(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--stage", default="sft", choices=("sft", "rl"))
  parser.add_argument("--drills", type=int, default=400)
  parser.add_argument("--mode", default="mq", choices=("mq", "sq"))
  parser.add_argument("--prompt", default="", help="prompt variant (default short_<mode>)")
  parser.add_argument("--json_indent", type=int, default=0, help="rollout.mq_json_indent")
  parser.add_argument("--world_seed", type=int, default=0)
  parser.add_argument("--world_entities", type=int, default=240)
  args = parser.parse_args()

  from flax import nnx
  from rag_r1_jax.runs.stage_files import load_exported_policy

  tokenizer, model, model_dir = load_exported_policy(args.run_dir, args.stage)
  forward = nnx.jit(lambda m, tokens, positions: m(tokens, positions=positions))

  def next_logits(ids: list[int]) -> np.ndarray:
    tokens = np.asarray(ids, np.int32)[None]
    out = forward(model, tokens, np.arange(len(ids), dtype=np.int32)[None])
    return np.asarray(out[0] if isinstance(out, tuple) else out)[0, -1]

  def encode(text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)

  def template(user: str) -> str:
    return prompts.apply_chat_template(tokenizer, user)

  world = synthetic_world.make_world(args.world_seed, args.world_entities)
  items = drill_items(world, args.drills, seed=12345, template=template)
  items += question_items(world, template, mode=args.mode,
                          prompt_variant=args.prompt or f"short_{args.mode}",
                          json_indent=args.json_indent)
  results = probe(items, encode, next_logits)
  print(f"{model_dir}: teacher-forced answers (first word right | whole name | chance)")
  for group, c in sorted(results.items()):
    print(f"  {group[0]:<10} {group[1]:<12} {group[2]} candidates: {c['n']:>4}  "
          f"first {c['first_right'] / c['n']:.2f}  whole {c['whole'] / c['n']:.2f}  "
          f"chance {1 / group[2]:.2f}")


if __name__ == "__main__":
  main()
