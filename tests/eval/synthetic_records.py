"""Synthetic evaluation records shaped like the harness' output, for the eval tests."""

import numpy as np

ANSWERS = ("Paris", "the Paris", "Lyon", "Paris France", None)


def hand_records() -> list[dict]:
  """Three records whose metrics are worked out by hand in the tests."""
  base = {"question": "q?", "response_text": "", "finish_reason": "answer"}
  return [
      {**base, "dataset": "nq", "id": "n0", "golden_answers": ["paris"], "answer": "Paris",
       "turns": 2, "queries_per_turn": [1, 3], "generated_tokens": 100,
       "decode_seconds": 1.0, "retrieval_seconds": 0.5, "total_seconds": 2.0},
      {**base, "dataset": "nq", "id": "n1", "golden_answers": ["Rome"], "answer": None,
       "turns": 0, "queries_per_turn": [], "generated_tokens": 50, "finish_reason": "length",
       "decode_seconds": 0.4, "retrieval_seconds": 0.0, "total_seconds": 0.5},
      {**base, "dataset": "hotpotqa", "id": "h0", "golden_answers": ["Beatles"],
       "answer": "the Beatles band", "turns": 1, "queries_per_turn": [2],
       "generated_tokens": 30, "decode_seconds": 0.2, "retrieval_seconds": 0.3,
       "total_seconds": 0.6},
  ]


def random_records(seed: int, datasets: tuple[str, ...], per_dataset: int) -> list[dict]:
  """Seeded records with varied answers, searches and timings."""
  rng = np.random.default_rng(seed)
  records = []
  for name in datasets:
    for i in range(per_dataset):
      turns = int(rng.integers(0, 5))
      decode, retrieval = float(rng.uniform(0.1, 2)), float(rng.uniform(0, 1)) * (turns > 0)
      answer = ANSWERS[int(rng.integers(len(ANSWERS)))]
      records.append({
          "dataset": name, "id": f"{name}_{i}", "question": f"question {i}?",
          "golden_answers": ["Paris", "City of Light"],
          "response_text": "" if answer is None else f"<think>t</think><answer>{answer}</answer>",
          "answer": answer, "turns": turns,
          "queries_per_turn": [int(q) for q in rng.integers(1, 4, size=turns)],
          "finish_reason": "answer" if answer is not None else "length",
          "generated_tokens": int(rng.integers(20, 400)),
          "decode_seconds": decode, "retrieval_seconds": retrieval,
          "total_seconds": decode + retrieval + float(rng.uniform(0, 0.2)),
      })
  return records
