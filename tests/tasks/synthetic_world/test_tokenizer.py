"""Tests for the world tokenizer: lossless round trip, single-token tags, template, lengths."""

import collections
import statistics

import pytest
import transformers

from rag_r1_jax.tasks.demonstrations import trajectory_text
from rag_r1_jax.tasks.synthetic_world import teacher
from rag_r1_jax.tasks.synthetic_world import tokenizer as wt
from rag_r1_jax.tasks.synthetic_world import world as sw
from rag_r1_jax.retrieval.base import ExactRetriever
from rag_r1_jax.rollout import observation

SHORT_PROMPT = ("Answer the question. Search with <search> q1, q2 </search>; answer with "
                "<answer> a </answer>. Question: {question}\n")
PAPER_MQ_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query_1,query_2 </search> and it will return the "
    "top searched results for each query between <information> and </information>. You can "
    "search as many times as you want, using up to three queries each time. If you find no "
    "further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n")


@pytest.fixture(scope="module")
def world() -> sw.World:
  return sw.make_world(0, 240)


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("world_tokenizer"))
  wt.build_world_tokenizer(world, out, extra_texts=[SHORT_PROMPT, PAPER_MQ_PROMPT])
  return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
  return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def trajectories(world):
  retriever = ExactRetriever(world.passages)
  return {(split, mode): list(zip(qs, teacher.teacher_trajectories(world, qs, retriever,
                                                                   mode=mode, topk=3)))
          for split in sw.SPLITS for mode in ("sq", "mq")
          for qs in [world.split_questions(split)]}


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False)


def test_loads_offline_with_special_tokens(tok):
  assert isinstance(tok, transformers.PreTrainedTokenizerFast)
  assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|end|>")
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  assert 800 <= len(tok) <= 4096
  print(f"\nworld tokenizer vocabulary: {len(tok)}")


def test_tags_are_single_tokens_that_decode_verbatim(tok):
  for tag in wt.TAGS:
    ids = _ids(tok, tag)
    assert len(ids) == 1, tag
    assert tok.decode(ids) == tag and tok.decode(ids, skip_special_tokens=True) == tag
  text = "<think> a </think><search> b, c </search>"
  assert tok.convert_ids_to_tokens(_ids(tok, text))[0] == "<think>"
  assert tok.decode(_ids(tok, text), skip_special_tokens=True) == text


def test_round_trip_on_world_texts(world, tok, trajectories):
  texts = [d.contents for d in world.passages] + [q.question for q in world.questions]
  texts += [trajectory_text(s) for _, s in trajectories[("test", "mq")][:200]]
  texts += [observation.INVALID_ACTION_TEXT, "caf\u00e9 \u4e2d\u6587 \U0001f600 \\n \t x\n\n"]
  for text in texts:
    assert tok.decode(_ids(tok, text)) == text


def test_json_escapes_do_not_fuse_with_names(world, tok):
  name = world.split_questions("test")[0].plan[0][0].entity
  first = name.split(" ")[0]
  tokens = tok.convert_ids_to_tokens(_ids(tok, f'"Doc 1: \\"{name}\\"\\n{name}: born'))
  assert tokens.count("\\n") == 1 and tokens.count("\u0120\\\"") == 1  # \u0120: a space
  assert tokens[tokens.index("\\n") + 1] == first
  assert tokens[tokens.index("\u0120\\\"") + 1] == first
  assert tokens[tokens.index("\\n") - 1] == "\\\""


def test_chat_template(tok):
  messages = [{"role": "user", "content": "Q?"}]
  text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert text == "<|bos|><|user|>\nQ?<|end|>\n<|assistant|>\n"
  ids = _ids(tok, text)
  assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|user|>")]
  assert tok.convert_tokens_to_ids("<|end|>") == tok.eos_token_id
  both = messages + [{"role": "assistant", "content": "A"}]
  assert tok.apply_chat_template(both, tokenize=False) == (
      "<|bos|><|user|>\nQ?<|end|>\n<|assistant|>\nA<|end|>\n")


def test_test_names_use_trained_tokens(tok, trajectories):
  """Tokens the model must write for test questions occur often in train trajectories."""
  counts = collections.Counter()
  for mode in ("sq", "mq"):
    for _, segments in trajectories[("train", mode)]:
      for s in segments:
        counts.update(_ids(tok, s.text))
  rare = total = 0
  for _, segments in trajectories[("test", "mq")]:
    for s in segments:
      if s.role == "policy":
        ids = _ids(tok, s.text)
        rare += sum(counts[i] < 50 for i in ids)
        total += len(ids)
  print(f"\ntest policy tokens seen < 50 times in train trajectories: {rare / total:.4f}")
  assert rare / total < 0.02


def test_trajectory_lengths(tok, trajectories):
  """Prompt (chat template) + response + eos token counts, printed per kind and mode."""
  prompt_len = lambda p, q: len(_ids(tok, tok.apply_chat_template(
      [{"role": "user", "content": p.format(question=q.question)}], add_generation_prompt=True,
      tokenize=False)))
  print()
  worst = {}
  for mode in ("sq", "mq"):
    for kind in sw.KINDS:
      pairs = [(q, s) for q, s in trajectories[("test", mode)] if q.kind == kind]
      response = [sum(len(_ids(tok, x.text)) for x in s) + 1 for _, s in pairs]
      short = [prompt_len(SHORT_PROMPT, q) + r for (q, _), r in zip(pairs, response)]
      paper = [prompt_len(PAPER_MQ_PROMPT, q) + r for (q, _), r in zip(pairs, response)]
      worst[mode, kind] = max(short)
      print(f"{mode} {kind:10s} response mean {statistics.mean(response):5.1f}  "
            f"+short prompt mean {statistics.mean(short):5.1f} max {max(short)}  "
            f"+paper prompt mean {statistics.mean(paper):5.1f} max {max(paper)}")
  assert worst["mq", "single"] < worst["mq", "comparison"] < worst["mq", "fanout"] <= 420
  assert worst["sq", "fanout"] <= 420


def test_extra_texts_are_learnt(world, tmp_path):
  extra = ["Zorbulation quintessence " * 20]
  with_extra = wt.build_world_tokenizer(sw.make_world(0, 40), str(tmp_path / "a"),
                                        extra_texts=extra)
  without = wt.build_world_tokenizer(sw.make_world(0, 40), str(tmp_path / "b"))
  word = " Zorbulation quintessence"
  assert len(_ids(with_extra, word)) == 2 < len(_ids(without, word))


def test_split_digits_gives_one_token_per_digit(tmp_path):
  world = sw.make_world(0, 40)
  whole = wt.build_world_tokenizer(world, str(tmp_path / "whole"))
  split = wt.build_world_tokenizer(world, str(tmp_path / "split"), split_digits=True)
  text = "Kridu Shapa: born 1945 in Dudrol Hill, height 174 cm. Doc 12"
  assert whole.convert_ids_to_tokens(_ids(whole, " 1945 ")) == ["\u01201945", "\u0120"]
  assert split.convert_ids_to_tokens(_ids(split, " 1945 174")) == [
      "\u01201", "9", "4", "5", "\u01201", "7", "4"]
  assert split.decode(_ids(split, text)) == text
  digit_tokens = {t for t in split.get_vocab() if t.lstrip("\u0120").isdigit()}
  assert all(len(t.lstrip("\u0120")) == 1 for t in digit_tokens)
  assert len(digit_tokens) <= 20  # ten digits, with and without a leading space
