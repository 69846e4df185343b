"""SFT data: masks on the policy's tokens only, segment alignment, buckets, deterministic split."""

import numpy as np
import pytest

from rag_r1_jax.tasks.demonstrations import Segment
from rag_r1_jax.training.sft import data as sft_data
from tests.char_tokenizer import char_tokenizer

OUTPUT = ("<think> need the city </think><search> Ann Lee </search>\n\n<information>Doc 1: Ann "
          "Lee lives in Oslo.</information>\n\n<think> Oslo </think><answer> Oslo </answer>")


def _decode(tok, ids):
  return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def test_alpaca_row_trains_only_the_policy_text():
  tok = char_tokenizer()
  assert len(tok) < 128 and len(tok.encode("<information>", add_special_tokens=False)) == 1
  ex = sft_data.encode_alpaca_row(tok, {"instruction": "Where does Ann Lee live?",
                                        "input": "", "output": OUTPUT, "system": ""})
  prompt = "<|user|>\nWhere does Ann Lee live?<|end|>\n<|assistant|>\n"
  info = "<information>Doc 1: Ann Lee lives in Oslo.</information>"
  assert _decode(tok, ex.tokens) == prompt + OUTPUT + "<|end|>"
  assert _decode(tok, ex.tokens[ex.loss_mask == 1]) == OUTPUT.replace(info, "") + "<|end|>"
  assert _decode(tok, ex.tokens[ex.loss_mask == 0]) == prompt + info
  # The masked-out block is contiguous: prompt, trained, information, trained.
  changes = np.flatnonzero(np.diff(ex.loss_mask))
  assert len(changes) == 3 and ex.loss_mask[-1] == 1 and ex.tokens[-1] == tok.eos_token_id


def test_alpaca_input_and_system_fields():
  tok = char_tokenizer()
  ex = sft_data.encode_alpaca_row(tok, {"instruction": "Answer.", "input": "Who?",
                                        "output": "<answer> x </answer>", "system": "Be brief."})
  text = _decode(tok, ex.tokens)
  assert text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nAnswer.\nWho?<|end|>\n")
  assert _decode(tok, ex.tokens[ex.loss_mask == 1]) == "<answer> x </answer><|end|>"


def test_split_information_pieces():
  pieces = sft_data.split_information("a<information>b</information>c<information>d</information>")
  assert pieces == [("a", "policy"), ("<information>b</information>", "information"),
                    ("c", "policy"), ("<information>d</information>", "information")]
  assert sft_data.split_information("plain") == [("plain", "policy")]


def _search_then_answer():
  """A search turn, its information block, then the answer turn."""
  return [Segment("<think> need city </think><search> Ann </search>", "policy"),
          Segment("<information>Ann: Oslo</information>", "information"),
          Segment("<think> Oslo </think><answer> Oslo </answer>", "policy")]


def test_subsamples_mask_only_the_target():
  segments = _search_then_answer()
  tok = char_tokenizer()
  examples = sft_data.subsample_examples(tok, [("Where?", segments)])
  assert len(examples) == 2
  first, second = examples
  assert _decode(tok, first.tokens[first.loss_mask == 1]) == segments[0].text + "<|end|>"
  assert _decode(tok, second.tokens[second.loss_mask == 1]) == segments[2].text + "<|end|>"
  assert _decode(tok, second.tokens[second.loss_mask == 0]) == (
      "<|user|>\nWhere?<|end|>\n<|assistant|>\n" + segments[0].text + segments[1].text)
  # Segment-wise tokenisation: lengths add up exactly.
  lengths = [len(tok.encode(s.text, add_special_tokens=False)) for s in segments]
  assert int(second.loss_mask.sum()) == lengths[2] + 1
  assert len(second) - len(first) == lengths[1] + lengths[2]


def test_whole_examples_train_every_policy_segment_and_no_information():
  segments = _search_then_answer()
  tok = char_tokenizer()
  [whole] = sft_data.whole_examples(tok, [("Where?", segments)])
  assert _decode(tok, whole.tokens) == ("<|user|>\nWhere?<|end|>\n<|assistant|>\n"
                                        + "".join(s.text for s in segments) + "<|end|>")
  assert _decode(tok, whole.tokens[whole.loss_mask == 1]) == (
      segments[0].text + segments[2].text + "<|end|>")
  # The same tokens and targets as the last cut sub-sample, which holds the whole response.
  last = sft_data.subsample_examples(tok, [("Where?", segments)])[-1]
  np.testing.assert_array_equal(whole.tokens, last.tokens)
  assert whole.loss_mask.sum() > last.loss_mask.sum()


def _examples(lengths):
  return [sft_data.SFTExample(np.arange(1, n + 1, dtype=np.int32), np.ones(n, np.float32))
          for n in lengths]


def test_batches_bucketed_padded_deterministic_and_complete():
  examples = _examples([5, 70, 3, 64, 9])
  epoch0 = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0))
  assert len(epoch0) == 3 == sft_data.steps_per_epoch(5, 2)
  assert all(b["tokens"].shape[0] == 2 and b["tokens"].shape[1] % 64 == 0 for b in epoch0)
  seen = sorted(int(b["attention_mask"][r].sum()) for b in epoch0 for r in range(2))
  assert seen == [0, 3, 5, 9, 64, 70]  # every example once, plus one empty padding row
  for b in epoch0:
    longest = int(b["attention_mask"].sum(1).max())
    assert b["tokens"].shape[1] == sft_data.bucket_length(longest, 64)
    np.testing.assert_array_equal(b["loss_mask"], b["attention_mask"])
  again = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0))
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(epoch0, again))
  tail = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0, start=1))
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(epoch0[1:], tail))
  epoch1 = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=1))
  assert any(a["tokens"].shape != b["tokens"].shape or not np.array_equal(a["tokens"], b["tokens"])
             for a, b in zip(epoch0, epoch1))
  kept, dropped = sft_data.drop_long(examples, 64)
  assert dropped == 1 and [len(e) for e in kept] == [5, 3, 64, 9]


def test_packed_batches_hold_every_example_once_in_rows_that_fit():
  lengths = [5, 70, 3, 64, 9, 120, 33, 7, 50, 128]
  examples = _examples(lengths)
  epoch0 = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0,
                                 pack_length=128))
  assert len(epoch0) == sft_data.epoch_steps(examples, 2, 1, 0, pack_length=128)
  assert len(epoch0) < sft_data.steps_per_epoch(len(examples), 2)  # fewer steps than padded
  found = []
  for b in epoch0:
    assert b["tokens"].shape == (2, 128)
    for r in range(2):
      segments = b["attention_mask"][r]
      for k in range(1, segments.max() + 1):
        where = np.flatnonzero(segments == k)
        assert where.size and (np.diff(where) == 1).all()  # contiguous, in order
        np.testing.assert_array_equal(b["positions"][r, where], np.arange(where.size))
        np.testing.assert_array_equal(b["tokens"][r, where], np.arange(1, where.size + 1))
        found.append(where.size)
      assert (segments[segments.argmin():] == 0).all() or segments.min() > 0  # padding at the end
      np.testing.assert_array_equal(b["loss_mask"][r], segments > 0)
  assert sorted(found) == sorted(lengths)
  again = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0, pack_length=128))
  tail = list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0, start=1,
                               pack_length=128))
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(epoch0, again))
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(epoch0[1:], tail))
  with pytest.raises(ValueError, match="sft.pack_length"):
    list(sft_data.batches(examples, rows=2, multiple=64, seed=1, epoch=0, pack_length=100))


def test_train_validation_split_is_deterministic_and_disjoint():
  items = list(range(100))
  train, val = sft_data.split_train_validation(items, 0.1, seed=3)
  assert len(val) == 10 and len(train) == 90 and sorted(train + val) == items
  assert (train, val) == sft_data.split_train_validation(items, 0.1, seed=3)
  assert val != sft_data.split_train_validation(items, 0.1, seed=4)[1]
  assert sft_data.split_train_validation(items[:3], 0.01, seed=0)[1] != []
  assert sft_data.split_train_validation(items, 0.0, seed=0) == (items, [])
  with pytest.raises(ValueError, match="sft.validation_fraction"):
    sft_data.split_train_validation(items, 1.0, seed=0)
