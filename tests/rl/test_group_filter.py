"""Choosing GRPO groups: mixed-reward groups first, then uniform ones, and the rollout cut."""

import numpy as np
import pytest

from rag_r1_jax.rl import group_filter
from rag_r1_jax.rollout.trajectories import Rollout, RowRecord, group_rows
from rag_r1_jax.runs.rl_stage import rollout_question_count

# Five groups of three: uniform 0, mixed, uniform 1, mixed, uniform 0.
REWARDS = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0.5, 0, 0, 0, 0], np.float32)


def test_mixed_groups():
  np.testing.assert_array_equal(group_filter.mixed_groups(REWARDS, 3),
                                [False, True, False, True, False])


@pytest.mark.parametrize("keep, want", [(1, [1]), (2, [1, 3]), (3, [0, 1, 3]),
                                        (4, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 4])])
def test_select_groups_mixed_first_then_in_order(keep, want):
  mixed = group_filter.mixed_groups(REWARDS, 3)
  np.testing.assert_array_equal(group_filter.select_groups(mixed, keep), want)


def test_select_groups_rejects_more_than_rolled_out():
  with pytest.raises(ValueError, match="cannot keep 6 of 5 groups"):
    group_filter.select_groups(group_filter.mixed_groups(REWARDS, 3), 6)


def test_group_rows():
  np.testing.assert_array_equal(group_rows(np.array([1, 3]), 3), [3, 4, 5, 9, 10, 11])


def _record(i):
  return RowRecord(prompt_index=i // 2, response_text=f"row {i}", answer=None, turns=0,
                   queries_per_turn=[], finish_reason="answer", generated_tokens=1,
                   prompt_tokens=1, total_tokens=2, decode_seconds=0.0,
                   retrieval_seconds=0.0, total_seconds=0.0)


def test_take_groups_keeps_rows_renumbers_groups_and_cuts_width():
  rows, width = 6, 64  # three groups of two; only group 2's second row is long
  lengths = np.array([5, 7, 3, 4, 6, 40])
  mask = np.arange(width)[None, :] < lengths[:, None]
  tokens = np.where(mask, np.arange(rows)[:, None] * 100 + np.arange(width)[None, :], 0)
  rollout = Rollout(tokens=tokens.astype(np.int32), positions=np.tile(np.arange(width), (rows, 1)),
                    attention_mask=mask, loss_mask=mask.astype(np.float32),
                    sampler_logprobs=-mask.astype(np.float32),
                    group_ids=np.repeat(np.arange(3), 2).astype(np.int32),
                    records=[_record(i) for i in range(rows)])
  kept = rollout.take_groups(np.array([0, 1]), 2)
  assert kept.tokens.shape == (4, 16)  # the 40-token straggler of group 2 is gone
  np.testing.assert_array_equal(kept.tokens, tokens[:4, :16])
  np.testing.assert_array_equal(kept.attention_mask.sum(1), [5, 7, 3, 4])
  np.testing.assert_array_equal(kept.group_ids, [0, 0, 1, 1])
  assert [r.response_text for r in kept.records] == ["row 0", "row 1", "row 2", "row 3"]
  last = rollout.take_groups(np.array([2]), 2)
  assert last.tokens.shape == (2, 48)
  np.testing.assert_array_equal(last.group_ids, [0, 0])
  assert [r.prompt_index for r in last.records] == [2, 2]  # still indexes the rolled-out prompts


@pytest.mark.parametrize("batch, factor, want", [(32, 1.0, 32), (32, 1.5, 48), (4, 1.5, 6),
                                                 (5, 1.1, 6), (32, 1.25, 40)])
def test_rollout_question_count(batch, factor, want):
  assert rollout_question_count(batch, factor) == want
