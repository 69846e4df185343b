"""Validation metrics during RL, exact on hand-made harness records."""

from rag_r1_jax.runs import rl_validation


def _record(dataset, answer, golds, turns):
  return {"dataset": dataset, "answer": answer, "golden_answers": golds, "turns": turns}


def test_metrics_per_dataset_when_there_are_several():
  records = [_record("nq", "Paris", ["paris"], 1), _record("nq", None, ["rome"], 2),
             _record("hotpotqa", "the Oslo", ["oslo"], 3), _record("hotpotqa", "x", ["y"], 0)]
  assert rl_validation.validation_metrics(records) == {
      "val/em": 0.5, "val/answer_rate": 0.75, "val/searches_per_question": 1.5,
      "val/em/nq": 0.5, "val/em/hotpotqa": 0.5,
      "val/searches_per_question/nq": 1.5, "val/searches_per_question/hotpotqa": 1.5}


def test_one_dataset_gives_the_overall_means_only():
  records = [_record("world", "a", ["a"], 2), _record("world", "b", ["a"], 1)]
  assert rl_validation.validation_metrics(records) == {
      "val/em": 0.5, "val/answer_rate": 1.0, "val/searches_per_question": 1.5}
