"""How does a synthetic-world policy get answers wrong? Reads evaluation trajectories.

For each `<run>/eval/<policy>/trajectories.jsonl` given, prints per question kind:
  - EM;
  - `thought_ok` (single-hop and bridge): wrong answers whose last thought holds a gold
    answer (the copy into `<answer>` failed, not the search or the reading);
  - `whole` (comparison and fan-out): answers that are one of the names the question lists,
    and how many of those are right (the rest mixed the words of two names, or chose wrong);
  - `decision` (comparison and fan-out): questions whose thoughts state a number for every
    listed name (in 'mq' the last thought states them all, in 'sq' one per search); of those,
    how many state every number right (against the run's world, `--world_seed` /
    `--world_entities`), and how many answers are the name that the thoughts' OWN numbers
    make the winner (`follows`), split by whether the numbers were right. An
    answer that follows wrong numbers is a reading error; one that does not follow right
    numbers is a decision error;
  - the commonest wrong answers. A policy that learnt an answer prior writes the same few
    answers whatever it read.
With `--world_draws 19,20` (and the run's `--world_seed` / `--world_entities`), also prints the
commonest gold answers of those train draws (RL rolls out on draws world.rl_draw, world.rl_draw
+ 1, ...: 19, 20, ... by default), so a prior learnt from them shows up as the same names in
both lists.

Usage: python experiments/diagnostics/answer_errors.py runs/rag_r1_mq/eval/sft/trajectories.jsonl
       runs/rag_r1_mq/eval/rl/trajectories.jsonl [--world_draws 19] [--top 4]
"""

import argparse
import collections
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rag_r1_jax.tasks.synthetic_world import world as synthetic_world  # noqa: E402
from rag_r1_jax.eval import answer_metrics  # noqa: E402

_NAME = re.compile(r"[A-Z][a-z]+ [A-Z][a-z]+")
# A comparison thought's facts ("X was born 1931", "X has height 172 cm", "X is a city of 300
# thousand people", see synthetic_world._FACTS): the name and its number.
_STATED = re.compile(r"([A-Z][a-z]+ [A-Z][a-z]+) (?:was born|has height|is a city of) (\d+)")


def listed_names(question: str) -> list[str]:
  """The two-word names a comparison / fan-out question lists (its other words are lower-case
  after the first: "Which of X, Y and Z is the tallest?")."""
  return _NAME.findall(question)


def last_thought(response: str) -> str:
  start = response.rfind("<think>")
  end = response.find("</think>", start)
  return response[start:end] if start >= 0 and end > start else ""


def thoughts(response: str) -> str:
  """Every `<think>` block of the response, in order ('sq' states one fact per thought)."""
  return " ; ".join(re.findall(r"<think>(.*?)</think>", response, flags=re.S))


def decision_summary(rows: list[dict], world: synthetic_world.World) -> dict:
  """Comparison / fan-out decisions (see the module docstring's `decision`); `world` is the
  run's, whose questions give each row's candidates and attribute."""
  by_text = {q.question: q for q in world.questions}
  out = {"stated": 0, "right_numbers": 0, "follows_right": 0, "follows_wrong": 0}
  for r in rows:
    q = by_text.get(r["question"])
    if q is None:
      raise ValueError(f"{r['question']!r} is not a question of the world with seed "
                       f"{world.seed}: pass the run's --world_seed and --world_entities")
    names = [lk.entity for round_ in q.plan for lk in round_]
    attribute = q.plan[0][0].attribute
    stated = dict(_STATED.findall(thoughts(r["response_text"])))  # the last statement wins
    if any(n not in stated for n in names):
      continue
    out["stated"] += 1
    numbers = {n: int(stated[n]) for n in names}
    smallest_wins = synthetic_world.COMPARISONS[attribute][1]
    pick = (min if smallest_wins else max)(names, key=numbers.get)
    right = all(getattr(world.entity(n), attribute) == numbers[n] for n in names)
    out["right_numbers"] += right
    follows = (r["answer"] or "").strip() == pick
    out["follows_right" if right else "follows_wrong"] += follows
  return out


def kind_summary(rows: list[dict], top: int) -> dict:
  wrong = [r for r in rows if not r["em"]]
  out = {"n": len(rows), "em": sum(r["em"] for r in rows) / len(rows), "wrong": len(wrong),
         "common_wrong": collections.Counter(r["answer"] for r in wrong).most_common(top)}
  if rows[0]["dataset"] in ("comparison", "fanout"):  # their thoughts name every candidate
    whole = [r for r in rows if (r["answer"] or "").strip() in listed_names(r["question"])]
    out["whole"] = (len(whole), int(sum(r["em"] for r in whole)))
  else:
    out["thought_ok"] = sum(
        any(answer_metrics.normalize_answer(g) in
            answer_metrics.normalize_answer(last_thought(r["response_text"]))
            for g in r["golden_answers"]) for r in wrong)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("trajectories", nargs="+")
  parser.add_argument("--top", type=int, default=4)
  parser.add_argument("--world_draws", default="", help="comma-separated train draws")
  parser.add_argument("--world_seed", type=int, default=0)
  parser.add_argument("--world_entities", type=int, default=240)
  args = parser.parse_args()
  world = synthetic_world.make_world(args.world_seed, args.world_entities)
  for path in args.trajectories:
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    print(f"== {path}")
    by_kind = collections.defaultdict(list)
    for r in records:
      by_kind[r["dataset"]].append(r)
    for kind in sorted(by_kind):
      s = kind_summary(by_kind[kind], args.top)
      detail = (f"whole {s['whole'][0]}/{s['n']}, right {s['whole'][1]}" if "whole" in s
                else f"thought_ok {s['thought_ok']}")
      common = ", ".join(f"{a!r} x{n}" for a, n in s["common_wrong"])
      print(f"{kind:<11} EM {s['em']:.3f} | wrong {s['wrong']} | {detail} | "
            f"commonest wrong: {common}")
      if "whole" in s:
        d = decision_summary(by_kind[kind], world)
        wrong = d["stated"] - d["right_numbers"]
        print(f"{'':<11} decision: {d['stated']}/{s['n']} thoughts state every number; "
              f"right numbers {d['right_numbers']} (answer follows them {d['follows_right']}), "
              f"wrong numbers {wrong} (answer follows them {d['follows_wrong']})")
  if args.world_draws:
    for draw in (int(d) for d in args.world_draws.split(",")):
      questions = synthetic_world.train_draw(world, draw).split_questions("train")
      for kind in sorted({q.kind for q in questions}):
        golds = collections.Counter(q.golden_answers[0] for q in questions if q.kind == kind)
        total = sum(golds.values())
        common = ", ".join(f"{a!r} {n / total:.0%}" for a, n in golds.most_common(args.top))
        print(f"draw {draw} {kind:<11} commonest gold answers: {common}")


if __name__ == "__main__":
  main()
