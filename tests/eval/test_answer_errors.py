"""experiments/diagnostics/answer_errors.py: the failure counts it prints, on exact records."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "answer_errors", os.path.join(ROOT, "experiments", "diagnostics", "answer_errors.py"))
answer_errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(answer_errors)


def _row(kind, question, gold, answer, thought):
  return {"dataset": kind, "question": question, "golden_answers": [gold], "answer": answer,
          "em": float(answer == gold),
          "response_text": f"<think> {thought} </think><answer> {answer} </answer>"}


def test_bridge_counts_copies_that_failed_after_a_right_thought():
  q = "In which city is the company that Netror Shese works for headquartered?"
  rows = [_row("bridge", q, "Viro Springs", "Viro Springs", "based in Viro Springs"),
          _row("bridge", q, "Viro Springs", "Gudro Springs", "based in Viro Springs"),
          _row("bridge", q, "Viro Springs", "Gudro Springs", "based in Rivu Springs"),
          _row("bridge", q, "Viro Springs", "Rivu Springs", "based in Rivu Springs")]
  s = answer_errors.kind_summary(rows, top=1)
  assert s["n"] == 4 and s["em"] == 0.25 and s["wrong"] == 3
  assert s["thought_ok"] == 1  # only the second row read the right city and wrote another
  assert s["common_wrong"] == [("Gudro Springs", 2)]
  assert "whole" not in s


def test_comparison_counts_whole_names_and_mixed_ones():
  q = "Who was born earlier, Fobun Delir or Kridu Shapa?"
  assert answer_errors.listed_names(q) == ["Fobun Delir", "Kridu Shapa"]
  rows = [_row("comparison", q, "Fobun Delir", "Fobun Delir", ""),
          _row("comparison", q, "Fobun Delir", "Kridu Shapa", ""),
          _row("comparison", q, "Fobun Delir", "Fobun Shapa", ""),
          _row("comparison", q, "Fobun Delir", None, "")]
  s = answer_errors.kind_summary(rows, top=4)
  assert s["whole"] == (2, 1)
  assert "thought_ok" not in s


def test_decisions_split_reading_errors_from_choosing_errors():
  from rag_r1_jax.tasks.synthetic_world import world as synthetic_world
  world = synthetic_world.make_world(0, 240)
  q = next(q for q in world.split_questions("test", ["comparison"]) if "born" in q.question)
  a, b = answer_errors.listed_names(q.question)
  ya, yb = world.entity(a).birth_year, world.entity(b).birth_year
  early, late = (a, b) if ya < yb else (b, a)
  right = f"{a} was born {ya}; {b} was born {yb}"
  swapped = f"{a} was born {yb}; {b} was born {ya}"  # both numbers wrong, the order reversed
  rows = [_row("comparison", q.question, early, early, right),   # right numbers, follows
          _row("comparison", q.question, early, late, right),    # right numbers, chose wrong
          _row("comparison", q.question, early, late, swapped),  # follows its wrong numbers
          _row("comparison", q.question, early, early, f"{a} was born {ya}"),  # one unstated
          _row("comparison", q.question, early, early, "need birth year")]
  sq = _row("comparison", q.question, early, early, f"{b} was born {yb}")  # one fact a thought
  sq["response_text"] = (f"<think> {a} was born {ya}; need birth year </think><search> {b} "
                         f"</search>\n\n<information>...</information>\n\n" + sq["response_text"])
  rows.append(sq)
  d = answer_errors.decision_summary(rows, world)
  assert d == {"stated": 4, "right_numbers": 3, "follows_right": 2, "follows_wrong": 1}
  other_world = synthetic_world.make_world(1, 240)
  with pytest.raises(ValueError, match="pass the run's --world_seed"):
    answer_errors.decision_summary(rows, other_world)
