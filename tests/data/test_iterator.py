"""BatchIterator: seeded per-epoch shuffles, fixed-size batches, exact resume from state."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rag_r1_jax.data import iterator


def _take(it, k):
  return [next(it) for _ in range(k)]


def test_epochs_cover_every_record_once_in_a_new_order():
  source = list(range(10))
  it = iterator.BatchIterator(source, batch_size=5, seed=3)
  epochs = [sum(_take(it, 2), []) for _ in range(3)]
  for order in epochs:
    assert sorted(order) == source
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs[0] == iterator.epoch_order(10, 3, 0).tolist()
  assert epochs[2] == iterator.epoch_order(10, 3, 2).tolist()
  assert it.epoch == 3


def test_same_seed_same_stream_other_seed_other_stream():
  source = [f"r{i}" for i in range(20)]
  a = _take(iterator.BatchIterator(source, 4, seed=0), 6)
  b = _take(iterator.BatchIterator(source, 4, seed=0), 6)
  c = _take(iterator.BatchIterator(source, 4, seed=1), 6)
  assert a == b and a != c


def test_batches_run_across_epoch_boundaries():
  it = iterator.BatchIterator(list(range(5)), batch_size=3, seed=0, shuffle=False)
  assert _take(it, 4) == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]
  assert it.get_state() == {"epoch": 2, "position": 2, "seed": 0, "num_records": 5,
                            "batch_size": 3, "shuffle": False}


def test_finite_epochs_short_or_dropped_last_batch():
  kept = list(iterator.BatchIterator(list(range(7)), 3, seed=0, shuffle=False, num_epochs=1))
  assert kept == [[0, 1, 2], [3, 4, 5], [6]]
  dropped = list(iterator.BatchIterator(list(range(7)), 3, seed=0, shuffle=False, num_epochs=1,
                                        drop_remainder=True))
  assert dropped == [[0, 1, 2], [3, 4, 5]]
  two = list(iterator.BatchIterator(list(range(4)), 3, seed=5, num_epochs=2))
  assert [len(b) for b in two] == [3, 3, 2]
  assert sorted(sum(two, [])) == [0, 0, 1, 1, 2, 2, 3, 3]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), batch=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       before=st.integers(0, 12), after=st.integers(1, 12))
def test_resume_continues_exactly_where_it_stopped(n, batch, seed, before, after):
  source = list(range(n))
  whole = _take(iterator.BatchIterator(source, batch, seed), before + after)
  first = iterator.BatchIterator(source, batch, seed)
  _take(first, before)
  state = json.loads(json.dumps(first.get_state()))
  resumed = iterator.BatchIterator(source, batch, seed=seed + 1)  # the state's seed wins
  resumed.set_state(state)
  assert _take(resumed, after) == whole[before:]
  assert all(len(b) == batch for b in whole)


def test_resume_of_a_finished_finite_run_stays_finished():
  it = iterator.BatchIterator(list(range(4)), 2, seed=0, num_epochs=1)
  assert len(list(it)) == 2
  state = it.get_state()
  with pytest.raises(StopIteration):
    next(it)
  again = iterator.BatchIterator(list(range(4)), 2, seed=0, num_epochs=1)
  again.set_state(state)
  assert list(again) == []


def test_state_from_other_data_is_rejected():
  state = iterator.BatchIterator(list(range(6)), 2, seed=0).get_state()
  with pytest.raises(ValueError, match="num_records=6 but this iterator has 7"):
    iterator.BatchIterator(list(range(7)), 2, seed=0).set_state(state)
  with pytest.raises(ValueError, match="shuffle=True but this iterator has False"):
    iterator.BatchIterator(list(range(6)), 2, seed=0, shuffle=False).set_state(state)


def test_bad_arguments():
  with pytest.raises(ValueError, match="batch_size=0"):
    iterator.BatchIterator([1], 0, seed=0)
  with pytest.raises(ValueError, match="empty source"):
    iterator.BatchIterator([], 1, seed=0)


class _BatchReadSource:
  """A source with a batched read, like tfds's data sources."""

  def __init__(self, n):
    self.n, self.batched_calls = n, 0

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    raise AssertionError("the batched read should be used")

  def __getitems__(self, indices):
    self.batched_calls += 1
    return [i * 10 for i in indices]


def test_uses_batched_reads_when_available():
  source = _BatchReadSource(6)
  batch = next(iterator.BatchIterator(source, 4, seed=2))
  assert source.batched_calls == 1
  assert batch == (iterator.epoch_order(6, 2, 0)[:4] * 10).tolist()
  assert np.all(np.diff(sorted(batch)) > 0)
