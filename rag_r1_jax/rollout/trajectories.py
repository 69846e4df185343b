"""Rollout results: padded trajectory tensors ready for training, plus per-row records."""

import dataclasses

import numpy as np

from rag_r1_jax.sampling.sampler import bucket


@dataclasses.dataclass
class RowRecord:
  """What happened in one trajectory.

  Seconds are the batch's time divided by its rows, without JAX compilation (compile_seconds).
  """
  prompt_index: int
  response_text: str
  answer: str | None
  turns: int  # searches made
  queries_per_turn: list[int]
  finish_reason: str  # answer | eos | length | max_turns
  generated_tokens: int
  prompt_tokens: int
  total_tokens: int
  decode_seconds: float
  retrieval_seconds: float
  total_seconds: float
  compile_seconds: float = 0.0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Rollout:
  """Right-padded tensors over `width` positions (a bucket), one row per trajectory."""
  tokens: np.ndarray  # [batch, width] int32
  positions: np.ndarray  # [batch, width] int32
  attention_mask: np.ndarray  # [batch, width] bool: real tokens
  loss_mask: np.ndarray  # [batch, width] float32: 1 only on tokens the policy generated
  sampler_logprobs: np.ndarray  # [batch, width] float32: log p(token) when sampled, else 0
  group_ids: np.ndarray  # [batch] int32: rows of one prompt share an id
  records: list[RowRecord]
  # Per decode call (turn), (row-steps of rows still decoding, all row-steps): a decode step
  # costs every row of the sampler's batch, finished and padding rows included.
  decode_row_steps: list[tuple[int, int]] = dataclasses.field(default_factory=list)
  # Distinct queries sent in each retriever call of this rollout (this process's calls).
  retrieval_queries: list[int] = dataclasses.field(default_factory=list)
  # Continuous schedule: the idle decode row-steps by cause (continuous.IDLE_CAUSES).
  idle_row_steps: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def slot_use(self) -> float:
    """Useful / all decode row-steps (1.0: no row ever waited; nan: no decoding)."""
    useful, total = np.sum(self.decode_row_steps, axis=0) if self.decode_row_steps else (0, 0)
    return float(useful / total) if total else float("nan")

  def tensors(self) -> dict[str, np.ndarray]:
    return {"tokens": self.tokens, "positions": self.positions,
            "attention_mask": self.attention_mask, "loss_mask": self.loss_mask,
            "sampler_logprobs": self.sampler_logprobs, "group_ids": self.group_ids}

  def take_groups(self, groups: np.ndarray, group_size: int) -> "Rollout":
    """The rows of these prompt groups, renumbered 0..len(groups)-1, cut to the bucketed width
    of their longest row (a dropped straggler no longer widens the update).

    Records keep their `prompt_index`, the index into the prompts that were rolled out.
    Every group in order (rl.oversample 1) is this rollout itself, returned without a copy.
    """
    every = np.arange(len(self.group_ids) // group_size)
    if (np.array_equal(groups, every)
        and np.array_equal(self.group_ids, np.repeat(every, group_size))):
      return self
    rows = group_rows(groups, group_size)
    width = _bucketed_width(self.attention_mask[rows].sum(axis=1), self.tokens.shape[1])
    cut = lambda x: x[rows, :width]
    return Rollout(
        tokens=cut(self.tokens), positions=cut(self.positions),
        attention_mask=cut(self.attention_mask), loss_mask=cut(self.loss_mask),
        sampler_logprobs=cut(self.sampler_logprobs),
        group_ids=np.repeat(np.arange(len(groups), dtype=np.int32), group_size),
        records=[self.records[r] for r in rows], decode_row_steps=self.decode_row_steps,
        retrieval_queries=self.retrieval_queries, idle_row_steps=self.idle_row_steps)


def _bucketed_width(lengths: np.ndarray, limit: int) -> int:
  """The bucketed width holding the longest of these rows, at most `limit`."""
  return min(limit, bucket(int(lengths.max()) if len(lengths) else 1))


def group_rows(groups: np.ndarray, group_size: int) -> np.ndarray:
  """The row indices of these prompt groups (rows g*size .. g*size+size-1 of each), in order."""
  groups = np.asarray(groups, np.int64)
  return (groups[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)


def build_rollout(host: dict[str, np.ndarray], keep: list[int], records: list[RowRecord],
                  group_size: int, decode_row_steps: list[tuple[int, int]] = ()) -> Rollout:
  """Cuts the sampler's per-row buffers down to the kept rows and a bucketed width."""
  lengths = host["lengths"][keep]
  width = _bucketed_width(lengths, host["tokens"].shape[1])
  cols = np.arange(width)[None, :]
  valid = cols < lengths[:, None]
  generated = host["generated"][keep, :width] & valid
  return Rollout(
      tokens=np.where(valid, host["tokens"][keep, :width], 0).astype(np.int32),
      positions=np.broadcast_to(cols, valid.shape).astype(np.int32),
      attention_mask=valid,
      loss_mask=generated.astype(np.float32),
      sampler_logprobs=np.where(generated, host["logprobs"][keep, :width], 0).astype(np.float32),
      group_ids=(np.asarray(keep) // group_size).astype(np.int32),
      records=records, decode_row_steps=list(decode_row_steps))
