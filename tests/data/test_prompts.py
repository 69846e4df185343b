"""Prompts: the paper's text verbatim, short variants, question clean-up, chat template."""

import os

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from rag_r1_jax.data import prompts
from tests.conftest import require_asset

# Copied from RAG_R1_FACTS.md (paper Tables 1-2), kept as whole literals on purpose.
SQ_EXPECTED = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every "
    "time you get new information. After reasoning, if you find you lack some knowledge, you can "
    "call a search engine by <search> query </search> and it will return the top searched results "
    "between <information> and </information>. You can search as many times as your want. If you "
    "find no further external knowledge needed, you can directly provide the answer inside "
    "<answer> and </answer>, without detailed illustrations. For example, <answer> Beijing "
    "</answer>. Question: Who wrote Hamlet?\n")
MQ_EXPECTED = SQ_EXPECTED.replace(
    "<search> query </search> and it will return the top searched results between",
    "<search> query_1,query_2 </search> and it will return the top searched results for each "
    "query between").replace(
        "You can search as many times as your want.",
        "You can search as many times as you want, using up to three queries each time.")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(chat_template):
  tok = PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
  tok.chat_template = chat_template
  return tok


def test_paper_prompts_verbatim():
  assert prompts.build_prompt("Who wrote Hamlet?", "paper_sq") == SQ_EXPECTED
  assert prompts.build_prompt("Who wrote Hamlet?", "paper_mq") == MQ_EXPECTED
  assert MQ_EXPECTED != SQ_EXPECTED and "as your want" not in MQ_EXPECTED


@pytest.mark.parametrize("variant,search_tag", [
    ("short_sq", "<search> query </search>"), ("short_mq", "<search> query,query </search>")])
def test_short_variants_keep_the_tags(variant, search_tag):
  text = prompts.build_prompt("who wrote hamlet", variant)
  for tag in ("<think>", "</think>", "<information>", "</information>", "<answer>", "</answer>"):
    assert tag in text
  assert search_tag in text
  assert text.endswith("Question: who wrote hamlet?\n")
  assert len(text) < len(SQ_EXPECTED) // 2
  assert ("up to three" in text) == variant.endswith("mq")


def test_question_clean_up():
  assert prompts.clean_question("  who wrote hamlet \n") == "who wrote hamlet?"
  assert prompts.clean_question("who?") == "who?"
  with pytest.raises(ValueError, match="empty question"):
    prompts.clean_question("  ")


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(ValueError, match="paper_mq.*paper_sq.*short_mq.*short_sq"):
    prompts.build_prompt("q", "paper")


def test_chat_template_one_user_turn_with_generation_prompt():
  text = prompts.apply_chat_template(_tokenizer(CHATML), "Question: x?\n")
  assert text == "<|im_start|>user\nQuestion: x?\n<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_chat_template_is_a_clear_error():
  with pytest.raises(ValueError, match="has no chat template"):
    prompts.apply_chat_template(_tokenizer(None), "Question: x?\n")


def test_real_smollm2_chat_template():
  path = require_asset("smollm2_gguf")
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  prompt = prompts.build_prompt("who wrote hamlet", "short_mq")
  text = prompts.apply_chat_template(tok, prompt)
  # SmolLM2's template adds its default system turn when none is given, as Qwen2.5's does.
  assert text.startswith("<|im_start|>system\n")
  assert text.endswith("<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n")
