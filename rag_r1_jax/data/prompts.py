"""The paper's prompts (RAG-R1 Tables 1-2) and short variants, and the chat-template wrapper.

'paper_sq' is Search-R1's prompt verbatim (its "as your want" typo included, because trained
checkpoints saw exactly that text); 'paper_mq' is RAG-R1's multi-query prompt, which changes two
sentences. 'short_sq' / 'short_mq' carry the same instructions and tags in two sentences, for
tiny CPU models whose context is short. The prompt is one user turn with no system message.
"""

from typing import Any

_PAPER_HEAD = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by ")
_PAPER_TAIL = (
    "If you find no further external knowledge needed, you can directly provide the answer "
    "inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>. Question: {question}\n")

PAPER_SQ = _PAPER_HEAD + (
    "<search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. ") + _PAPER_TAIL

PAPER_MQ = _PAPER_HEAD + (
    "<search> query_1,query_2 </search> and it will return the top searched results for each "
    "query between <information> and </information>. You can search as many times as you want, "
    "using up to three queries each time. ") + _PAPER_TAIL

SHORT_SQ = (
    "Think inside <think> </think>; to look something up write <search> query </search> and "
    "read the results inside <information> </information>. Give the short final answer inside "
    "<answer> </answer>. Question: {question}\n")

SHORT_MQ = (  # 4 tokens longer than SHORT_SQ: a two-name question's prompt fits 64 tokens
    "Think inside <think> </think>; to look up to three things write <search> query,query "
    "</search> and read the results inside <information> </information>. Give the short final "
    "answer inside <answer> </answer>. Question: {question}\n")

TEMPLATES = {
    "paper_sq": PAPER_SQ,
    "paper_mq": PAPER_MQ,
    "short_sq": SHORT_SQ,
    "short_mq": SHORT_MQ,
}


def clean_question(question: str) -> str:
  """Strips whitespace and appends '?' when missing, as the paper's data processing does."""
  question = question.strip()
  if not question:
    raise ValueError("empty question")
  if not question.endswith("?"):
    question += "?"
  return question


def build_prompt(question: str, variant: str) -> str:
  """The user-turn text for `question` in prompt `variant` (one of TEMPLATES)."""
  if variant not in TEMPLATES:
    raise ValueError(f"unknown prompt variant {variant!r}; valid: {sorted(TEMPLATES)}")
  return TEMPLATES[variant].format(question=clean_question(question))


def apply_chat_template(tokenizer: Any, prompt_text: str) -> str:
  """The prompt as one user turn through the tokenizer's chat template, ready for generation.

  Works with any Hugging Face tokenizer that has a chat template; a template that adds its own
  default system message (Qwen2.5, SmolLM2) keeps it, as the paper's code does.
  """
  if not getattr(tokenizer, "chat_template", None):
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ValueError(
        f"tokenizer {name!r} has no chat template; use an instruct model's tokenizer or set "
        "tokenizer.chat_template")
  return tokenizer.apply_chat_template(
      [{"role": "user", "content": prompt_text}], tokenize=False, add_generation_prompt=True)
