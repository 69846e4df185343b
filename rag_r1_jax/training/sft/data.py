"""Stage-1 SFT examples: token ids with a loss mask on the policy's own response tokens.

Two sources:
  * alpaca / LLaMA-Factory rows {instruction, input, output, system} (qa_builders.load_split
    ('sft', ...) or a list of dicts): instruction (+ "\\n" + input) is one user turn through
    the tokenizer's chat template; the output is the assistant response, in which every
    `<information> ... </information>` block (tags included) is masked out;
  * a task's demonstrations, segment lists (tasks/demonstrations.py: `.text`, `.role` in
    {'policy', 'information'}), either whole (observations masked) or cut into the paper's
    sub-samples (`cut_subsamples`): the context segments are masked, only the target trained.
Text is tokenised piece by piece (prompt, then each segment), so the mask lines up with the
pieces exactly. The response ends with the tokenizer's eos token (trained), as
LLaMA-Factory does, so the model learns to stop after `</answer>`.

Batches are right-padded to a multiple of `length_bucket` tokens (few distinct shapes, few
compiles) and to a fixed number of rows (padding rows have loss mask 0). Or, with a
`pack_length`, several examples share a row of exactly that many tokens (one shape, one
compile): positions restart at each example and `attention_mask` holds segment ids (1, 2, ...
per example in the row, 0 on padding), so no example attends to another.
"""

import collections
import dataclasses
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rag_r1_jax.data import prompts
from rag_r1_jax.data.iterator import epoch_order
from rag_r1_jax.tasks import demonstrations

_INFORMATION = re.compile(r"<information>.*?</information>", re.DOTALL)
Piece = collections.namedtuple("Piece", "text role")  # the fields of demonstrations.Segment


@dataclasses.dataclass(frozen=True)
class SFTExample:
  """One training sequence: tokens [n] int32 and loss_mask [n] float32 (1: a target token)."""
  tokens: np.ndarray
  loss_mask: np.ndarray

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


def split_information(text: str) -> list[Piece]:
  """The response as policy / information pieces (information = a whole tagged block)."""
  pieces, end = [], 0
  for match in _INFORMATION.finditer(text):
    if match.start() > end:
      pieces.append(Piece(text[end:match.start()], "policy"))
    pieces.append(Piece(match.group(0), "information"))
    end = match.end()
  if end < len(text):
    pieces.append(Piece(text[end:], "policy"))
  return pieces


def _ids(tokenizer: Any, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def chat_prompt(tokenizer: Any, user: str, system: str = "") -> str:
  """The prompt text up to the assistant's turn (a system turn only when given)."""
  if not system:
    return prompts.apply_chat_template(tokenizer, user)
  return tokenizer.apply_chat_template(
      [{"role": "system", "content": system}, {"role": "user", "content": user}],
      tokenize=False, add_generation_prompt=True)


def encode_segments(tokenizer: Any, prompt_text: str, segments: Sequence[Any],
                    trained: Sequence[bool], append_eos: bool = True) -> SFTExample:
  """prompt_text (already templated, mask 0) then each segment, masked 1 where `trained`.

  segments: objects with `.text` (demonstrations.Segment or Piece); trained: one flag per segment.
  The eos token, when appended, is trained.
  """
  assert len(segments) == len(trained), (len(segments), len(trained))
  tokens = _ids(tokenizer, prompt_text)
  mask = [0.0] * len(tokens)
  for segment, train in zip(segments, trained):
    ids = _ids(tokenizer, segment.text)
    tokens += ids
    mask += [float(train)] * len(ids)
  if append_eos:
    if tokenizer.eos_token_id is None:
      raise ValueError("the tokenizer has no eos token; SFT needs one to end responses")
    tokens.append(int(tokenizer.eos_token_id))
    mask.append(1.0)
  return SFTExample(np.asarray(tokens, np.int32), np.asarray(mask, np.float32))


def encode_alpaca_row(tokenizer: Any, row: dict) -> SFTExample:
  """One alpaca row: the policy text of `output` is trained, its information blocks are not."""
  user = row["instruction"] + (("\n" + row["input"]) if row.get("input") else "")
  pieces = split_information(row["output"])
  return encode_segments(tokenizer, chat_prompt(tokenizer, user, row.get("system", "")),
                         pieces, [p.role == "policy" for p in pieces])


def encode_subsample(tokenizer: Any, prompt_text: str, context: Sequence[Any],
                     target: Any) -> SFTExample:
  """A demonstration's sub-sample: templated prompt, context segments (masked), target (trained)."""
  assert target.role == "policy", "observations are never training targets"
  return encode_segments(tokenizer, prompt_text, [*context, target],
                         [False] * len(context) + [True])


def subsample_examples(tokenizer: Any,
                       trajectories: Iterable[tuple[str, Sequence[Any]]]) -> list[SFTExample]:
  """The paper's sub-sample examples (demonstrations.cut_subsamples) of (user prompt text,
  segments) pairs."""
  out = []
  for user, segments in trajectories:
    prompt_text = prompts.apply_chat_template(tokenizer, user)
    out += [encode_subsample(tokenizer, prompt_text, ctx, tgt)
            for ctx, tgt in demonstrations.cut_subsamples(segments)]
  return out


def whole_examples(tokenizer: Any,
                   trajectories: Iterable[tuple[str, Sequence[Any]]]) -> list[SFTExample]:
  """One example per (user prompt text, segments) pair, every policy segment trained."""
  out = []
  for user, segments in trajectories:
    prompt_text = prompts.apply_chat_template(tokenizer, user)
    out.append(encode_segments(tokenizer, prompt_text, segments,
                               [s.role == "policy" for s in segments]))
  return out


def drop_long(examples: Sequence[SFTExample], max_length: int) -> tuple[list[SFTExample], int]:
  """(examples of at most sft.max_length tokens, how many longer ones were dropped)."""
  kept = [e for e in examples if len(e) <= max_length]
  return kept, len(examples) - len(kept)


def split_train_validation(items: Sequence[Any], fraction: float,
                           seed: int) -> tuple[list[Any], list[Any]]:
  """A deterministic (train, validation) split; at least one validation item if fraction > 0.

  Split trajectories (or questions) before cutting them into sub-samples, so that no
  sub-sample of a validation trajectory is trained on. Both keep the input order.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"sft.validation_fraction={fraction} must be in [0, 1)")
  n = len(items)
  n_val = 0 if fraction == 0 or n < 2 else max(1, int(round(fraction * n)))
  val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
  return ([x for i, x in enumerate(items) if i not in val],
          [x for i, x in enumerate(items) if i in val])


def bucket_length(length: int, multiple: int) -> int:
  """length rounded up to a multiple of `multiple`."""
  return -(-length // multiple) * multiple


def pad_batch(examples: Sequence[SFTExample], rows: int, multiple: int) -> dict[str, np.ndarray]:
  """Right-padded arrays [rows, bucket]: tokens, positions, attention_mask, loss_mask."""
  assert 0 < len(examples) <= rows, (len(examples), rows)
  seq = bucket_length(max(len(e) for e in examples), multiple)
  tokens = np.zeros((rows, seq), np.int32)
  attention = np.zeros((rows, seq), np.int32)
  loss_mask = np.zeros((rows, seq), np.float32)
  for r, e in enumerate(examples):
    tokens[r, :len(e)] = e.tokens
    attention[r, :len(e)] = 1
    loss_mask[r, :len(e)] = e.loss_mask
  positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy()
  return {"tokens": tokens, "positions": positions, "attention_mask": attention,
          "loss_mask": loss_mask}


def pack_plan(lengths: Sequence[int], rows: int, width: int, seed: int, epoch: int,
              shuffle: bool = True) -> list[list[list[int]]]:
  """Example indices per batch and row ([batch][row] -> indices) for packed rows of `width`.

  Examples come in the (seed, epoch) order; each goes into the first row of the open batch
  with room for it, and the batch is closed when none has.
  """
  plan, batch, free = [], [[] for _ in range(rows)], [width] * rows
  for i in epoch_order(len(lengths), seed, epoch, shuffle):
    n = int(lengths[i])
    if n > width:
      raise ValueError(f"an SFT example has {n} tokens, more than sft.pack_length={width}: "
                       f"raise sft.pack_length or lower sft.max_length to drop such examples")
    row = next((r for r in range(rows) if free[r] >= n), None)
    if row is None:
      plan.append(batch)
      batch, free, row = [[] for _ in range(rows)], [width] * rows, 0
    batch[row].append(int(i))
    free[row] -= n
  if any(batch):
    plan.append(batch)
  return plan


def pack_batch(examples: Sequence[SFTExample], plan_rows: Sequence[Sequence[int]],
               width: int) -> dict[str, np.ndarray]:
  """Packed arrays [rows, width]; attention_mask holds each token's segment id (0: padding)."""
  rows = len(plan_rows)
  tokens = np.zeros((rows, width), np.int32)
  positions = np.zeros((rows, width), np.int32)
  segments = np.zeros((rows, width), np.int32)
  loss_mask = np.zeros((rows, width), np.float32)
  for r, indices in enumerate(plan_rows):
    at = 0
    for k, i in enumerate(indices, start=1):
      e = examples[i]
      n = len(e)
      tokens[r, at:at + n] = e.tokens
      positions[r, at:at + n] = np.arange(n)
      segments[r, at:at + n] = k
      loss_mask[r, at:at + n] = e.loss_mask
      at += n
  return {"tokens": tokens, "positions": positions, "attention_mask": segments,
          "loss_mask": loss_mask}


def batches(examples: Sequence[SFTExample], rows: int, multiple: int, seed: int, epoch: int,
            shuffle: bool = True, start: int = 0,
            pack_length: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one epoch from batch `start` on, in a deterministic (seed, epoch) order.

  Built lazily; the last batch is padded with empty rows. With `pack_length`, rows of that
  many tokens each hold as many examples as fit (`pack_plan`).
  """
  if pack_length:
    plan = pack_plan([len(e) for e in examples], rows, pack_length, seed, epoch, shuffle)
    for plan_rows in plan[start:]:
      yield pack_batch(examples, plan_rows, pack_length)
    return
  order = epoch_order(len(examples), seed, epoch, shuffle)
  for s in range(start * rows, len(order), rows):
    yield pad_batch([examples[i] for i in order[s:s + rows]], rows, multiple)


def steps_per_epoch(num_examples: int, rows: int) -> int:
  """Optimizer steps in one epoch of `num_examples` with padded batches of `rows`."""
  return -(-num_examples // rows)


def epoch_steps(examples: Sequence[SFTExample], rows: int, seed: int, epoch: int,
                pack_length: int = 0) -> int:
  """Optimizer steps in epoch `epoch` (packed epochs differ by the order's fit)."""
  if pack_length:
    return len(pack_plan([len(e) for e in examples], rows, pack_length, seed, epoch))
  return steps_per_epoch(len(examples), rows)
