"""A deterministic, seeded, checkpointable batch iterator over any random-access source.

The stream is epoch 0's permutation of the record indices, then epoch 1's, ...; each epoch's
permutation depends only on (seed, epoch), so the state {epoch, position, seed} pins the next
batch exactly. Batches have `batch_size` records and run across epoch boundaries, so no record
is dropped and no batch is short, except the last one of a finite run (`num_epochs`), which is
kept short or dropped (`drop_remainder`).
"""

from typing import Any, Optional, Sequence

import numpy as np


def epoch_order(num_records: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """Record indices [num_records] int64 in the order epoch `epoch` visits them."""
  if not shuffle:
    return np.arange(num_records, dtype=np.int64)
  return np.random.default_rng([seed, epoch]).permutation(num_records).astype(np.int64)


class BatchIterator:
  """Yields lists of `batch_size` records of `source` (anything with len and __getitem__)."""

  def __init__(self, source: Sequence[Any], batch_size: int, seed: int, shuffle: bool = True,
               num_epochs: Optional[int] = None, drop_remainder: bool = False):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    if len(source) == 0:
      raise ValueError("cannot iterate over an empty source")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs={num_epochs} must be >= 1 or None (forever)")
    self._source = source
    self._batch_size = batch_size
    self._seed = int(seed)
    self._shuffle = shuffle
    self._num_epochs = num_epochs
    self._drop_remainder = drop_remainder
    self._epoch = 0
    self._position = 0
    self._order = epoch_order(len(source), self._seed, 0, shuffle)

  def __iter__(self) -> "BatchIterator":
    return self

  def _next_indices(self) -> list[int]:
    """Advances the state by one batch and returns its record indices."""
    indices: list[int] = []
    while len(indices) < self._batch_size:
      if self._num_epochs is not None and self._epoch >= self._num_epochs:
        break
      take = min(self._batch_size - len(indices), len(self._order) - self._position)
      indices.extend(self._order[self._position:self._position + take].tolist())
      self._position += take
      if self._position == len(self._order):
        self._epoch += 1
        self._position = 0
        self._order = epoch_order(len(self._source), self._seed, self._epoch, self._shuffle)
    return indices

  def __next__(self) -> list[Any]:
    state = self.get_state()
    indices = self._next_indices()
    if not indices or (self._drop_remainder and len(indices) < self._batch_size):
      self.set_state(state)
      raise StopIteration
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is not None:
      return list(getitems(indices))
    return [self._source[i] for i in indices]

  @property
  def epoch(self) -> int:
    """The epoch the next record comes from."""
    return self._epoch

  def get_state(self) -> dict:
    """JSON-serialisable state; `set_state` of it resumes at the very next batch."""
    return {"epoch": self._epoch, "position": self._position, "seed": self._seed,
            "num_records": len(self._source), "batch_size": self._batch_size,
            "shuffle": self._shuffle}

  def set_state(self, state: dict) -> None:
    """Restores a `get_state` dict; it must describe the same source size and shuffling."""
    expected = {"num_records": len(self._source), "shuffle": self._shuffle}
    for key, value in expected.items():
      if key in state and state[key] != value:
        raise ValueError(f"iterator state has {key}={state[key]!r} but this iterator has "
                         f"{value!r}: it was saved over different data")
    position = int(state["position"])
    if not 0 <= position < len(self._source):
      raise ValueError(f"iterator state position={position} outside [0, {len(self._source)})")
    self._seed = int(state["seed"])
    self._epoch = int(state["epoch"])
    self._position = position
    self._order = epoch_order(len(self._source), self._seed, self._epoch, self._shuffle)
