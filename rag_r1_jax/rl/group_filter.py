"""Choosing which GRPO groups to train on when more prompts were rolled out than one batch.

A group whose samples all got the same reward has zero group-normalised advantage: it adds
nothing to the policy gradient but still costs its share of the update and dilutes the
token-mean loss. RAG-R1 keeps for RL the questions its SFT teacher solved in some but not
all samples (plus a quarter of easy ones); DAPO's "dynamic sampling" does the same online by
rolling out extra prompts and keeping groups with mixed rewards. Here a step rolls out
`rl.oversample` x `rl.batch_size` prompts and trains on `rl.batch_size` of them: mixed groups
first, then uniform ones, so the update keeps one static shape.
"""

import numpy as np


def mixed_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
  """[groups] bool: whether the group's rewards are not all equal. rewards: [groups * size]."""
  by_group = np.asarray(rewards, np.float64).reshape(-1, group_size)
  return by_group.max(axis=1) > by_group.min(axis=1)


def select_groups(mixed: np.ndarray, keep: int) -> np.ndarray:
  """The `keep` group indices to train on, ascending: mixed groups first (in order), then
  uniform ones (in order) to fill the batch. mixed: [groups] bool, from `mixed_groups`."""
  mixed = np.asarray(mixed, bool)
  if keep > mixed.size:
    raise ValueError(f"cannot keep {keep} of {mixed.size} groups")
  order = np.concatenate([np.flatnonzero(mixed), np.flatnonzero(~mixed)])
  return np.sort(order[:keep])
