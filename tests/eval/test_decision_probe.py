"""experiments/diagnostics/decision_probe.py: its counts on a scripted next-token scorer."""

import importlib.util
import os

import numpy as np

from rag_r1_jax.tasks.synthetic_world import world as sw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "decision_probe", os.path.join(ROOT, "experiments", "diagnostics", "decision_probe.py"))
decision_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decision_probe)

_WORDS = ["<answer>", " Fobun", " Delir", " Kridu", " Shapa", " Rofus", " Liza", " Spr", "ings",
          " Viro"]
_IDS = {w: i for i, w in enumerate(_WORDS)}


def _encode(text):
  """A tokenizer over _WORDS (longest match first); 'x' stands for any context character."""
  out = []
  while text:
    if text[0] == "x":
      text = text[1:]
      continue
    word = max((w for w in _WORDS if text.startswith(w)), key=len)
    out.append(_IDS[word])
    text = text[len(word):]
  return out


def _scorer(first, second):
  """Logits that put `first` on top after <answer> and `second` after any other token."""
  def next_logits(ids):
    logits = np.zeros(len(_WORDS))
    logits[_IDS[first if ids[-1] == _IDS["<answer>"] else second]] = 1.0
    return logits
  return next_logits


def test_probe_counts_first_words_and_whole_names():
  item = decision_probe.Item(("comparison", "birth_year", 2), "xx",
                             ("Fobun Delir", "Kridu Shapa"), "Kridu Shapa")
  right = decision_probe.probe([item], _encode, _scorer(" Kridu", " Shapa"))
  assert dict(right[item.group]) == {"n": 1, "first_right": 1, "whole": 1}
  mixed = decision_probe.probe([item, item], _encode, _scorer(" Kridu", " Delir"))
  assert dict(mixed[item.group]) == {"n": 2, "first_right": 2, "whole": 0}
  wrong = decision_probe.probe([item], _encode, _scorer(" Fobun", " Delir"))
  assert dict(wrong[item.group]) == {"n": 1, "first_right": 0, "whole": 1}


def test_probe_skips_candidates_that_start_alike_and_reads_first_tokens():
  shared = decision_probe.Item(("fanout", "height_cm", 3), "x",
                               ("Fobun Delir", "Fobun Shapa", "Rofus Liza"), "Rofus Liza")
  assert decision_probe.probe([shared], _encode, _scorer(" Rofus", " Liza")) == {}
  # A two-token word (" Spr" "ings") is chosen by its first token; the whole word is fed back.
  seen = []

  def next_logits(ids):
    seen.append(list(ids))
    return _scorer(" Viro", " Spr")(ids)
  cities = decision_probe.Item(("comparison", "population_k", 2), "x",
                               ("Viro Springs", "Kridu Delir"), "Viro Springs")
  counts = decision_probe.probe([cities], _encode, next_logits)
  assert dict(counts[cities.group]) == {"n": 1, "first_right": 1, "whole": 1}
  assert seen == [[_IDS["<answer>"]], [_IDS["<answer>"], _IDS[" Viro"]]]


def test_drill_items_name_the_attribute_candidates_and_winner():
  world = sw.make_world(1, 80)
  items = decision_probe.drill_items(world, 60, seed=4, template=lambda user: f"[{user}]")
  assert {i.group[1] for i in items} == set(sw.COMPARISONS)
  for item in items:
    source, key, n = item.group
    assert source == "drill" and len(item.names) == n and item.winner in item.names
    _, smallest, pair, fan = sw.COMPARISONS[key]
    assert item.context.startswith(f"[Decide: {(pair if n == 2 else fan).format(*item.names)}]")
    assert item.context.endswith(" </think>")


def test_question_items_end_at_the_teachers_last_thought():
  world = sw.make_world(1, 80)
  items = decision_probe.question_items(world, lambda user: "", mode="mq",
                                        prompt_variant="short_mq", json_indent=0)
  questions = world.split_questions("test", ["comparison", "fanout"])
  assert 0 < len(items) <= len(questions)
  for item in items:
    kind, key, n = item.group
    q = next(q for q in questions if q.golden_answers[0] == item.winner
             and tuple(lk.entity for lk in q.plan[0]) == item.names)
    assert (kind, n) == (q.kind, {"comparison": 2, "fanout": 3}[q.kind])
    facts = "; ".join(world.fact(lk) for lk in q.plan[0])
    assert item.context.endswith(f"<think> {facts} </think>") and "<answer>" not in item.context
