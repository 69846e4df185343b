"""A small byte-level BPE tokenizer trained for the synthetic world, saved as a HF tokenizer.

Trained with the `tokenizers` library on the texts the model will read and write: passages,
questions, teacher trajectories of train questions in both modes, the fixed observations, and
any extra texts (the prompts). Passages of test entities are left out: the world builds test
names only from words that train names use, so every token of a test name is one that training
updates (a test-only token would keep its random embedding and could not be copied out of a
retrieved passage).
JSON escapes (`\\n`, `\\"`) are pre-tokenized on their own, so `\\nName` does not fuse into
one piece that differs from `Name`.

The eight action tags are single added tokens that decode verbatim (not special, so
`skip_special_tokens` keeps them); bos/eos/pad and the chat-role markers are special tokens.
The chat template is one user turn (or alternating turns) and an assistant generation prompt:
`<|bos|><|user|>\\n{content}<|end|>\\n<|assistant|>\\n`; eos is `<|end|>`.
"""

import os
from typing import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers, Regex
import transformers

from rag_r1_jax.protocol import TAGS
from rag_r1_jax.retrieval.base import ExactRetriever
from rag_r1_jax.rollout import observation
from rag_r1_jax.tasks.demonstrations import trajectory_text
from rag_r1_jax.tasks.synthetic_world import teacher
from rag_r1_jax.tasks.synthetic_world import world as synthetic_world

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, USER, ASSISTANT)
# GPT-2's pre-tokenizer pattern, with a backslash escape (`\\n`, `\\"`, optionally after a
# space) kept as one piece and never fused with the punctuation or word around it.
PRETOKENIZE_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\\.| ?\p{L}+| ?\p{N}+"""
                       r"""| ?[^\s\p{L}\p{N}\\]+|\s+(?!\S)|\s+|\\""")
# The same with every digit a piece of its own (a leading space stays on the first digit), as
# Llama's and Qwen2's tokenizers split numbers: ten digit tokens that every number trains, in
# place of one rarely seen token per number.
SPLIT_DIGITS_PATTERN = PRETOKENIZE_PATTERN.replace(r" ?\p{N}+", r" ?\p{N}")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}<|end|>\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}<|end|>\n"
    "{% else %}{{ raise_exception('the world chat template has user and assistant turns only, "
    "got role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def training_texts(world: synthetic_world.World, extra_texts: Iterable[str] = (),
                   extra_weight: int = 50, topk: int = 3, json_indent: int = 2) -> list[str]:
  """The BPE's texts: what the model reads and writes for train questions, plus extra texts.

  Extra texts (the prompts, which open every sample) count `extra_weight` times, so that their
  words become whole tokens.
  """
  test_names = {e.name for e in world.entities if e.split == "test"}
  texts = [d.contents for d in world.passages if d.title not in test_names]
  train = world.split_questions("train")
  texts += [q.question for q in train]
  texts += [a for q in train for a in q.golden_answers]
  retriever = ExactRetriever(world.passages)
  for mode in ("sq", "mq"):
    for segments in teacher.teacher_trajectories(world, train, retriever, mode=mode, topk=topk,
                                                 json_indent=json_indent):
      if segments is not None:
        texts.append(trajectory_text(segments))
  texts += [observation.INVALID_ACTION_TEXT, observation.BUDGET_EXHAUSTED_TEXT,
            observation.problem_observation("the search query was empty")]
  return texts + list(extra_texts) * extra_weight


def _strip_tags(text: str) -> str:
  """The text with the tags blanked out, so that BPE spends no merges on them."""
  for tag in TAGS + SPECIAL_TOKENS:
    text = text.replace(tag, " ")
  return text


def train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int = 2,
              split_digits: bool = False) -> tokenizers.Tokenizer:
  """A byte-level BPE over `texts`, with the special tokens first and the tags added last."""
  tok = tokenizers.Tokenizer(models.BPE())
  pattern = SPLIT_DIGITS_PATTERN if split_digits else PRETOKENIZE_PATTERN
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - len(TAGS), min_frequency=min_frequency,
      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator((_strip_tags(t) for t in texts), trainer=trainer)
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False) for t in TAGS])
  return tok


def build_world_tokenizer(world: synthetic_world.World, out_dir: str, *,
                          extra_texts: Iterable[str] = (), extra_weight: int = 50,
                          vocab_size: int = 3072, min_frequency: int = 2,
                          json_indent: int = 2,
                          split_digits: bool = False) -> transformers.PreTrainedTokenizerFast:
  """Trains the world's tokenizer, saves it to out_dir and returns it loaded from there.

  `AutoTokenizer.from_pretrained(out_dir)` loads it offline. The vocabulary holds at most
  `vocab_size` entries (fewer when the texts run out of merges). `split_digits` makes every
  digit a token of its own (numbers are then copied digit by digit).
  """
  texts = training_texts(world, extra_texts, extra_weight, json_indent=json_indent)
  tok = train_bpe(texts, vocab_size, min_frequency, split_digits)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
      extra_special_tokens=[USER, ASSISTANT], clean_up_tokenization_spaces=False,
      chat_template=CHAT_TEMPLATE, model_max_length=1 << 20)
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return transformers.AutoTokenizer.from_pretrained(out_dir)
