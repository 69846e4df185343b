"""Search-R1 parquet rows: the question taken from the prompt's last user message."""

import pytest

from rag_r1_jax.data import search_r1_parquet
from tests.tasks.test_flashrag import TEMPLATE


@pytest.mark.parametrize("content,question", [
    (TEMPLATE.format("who is it?"), "who is it?"),
    ("Question: first?\nQuestion:  second? \n", "second?"),
    ("a plain question?", "a plain question?"),
])
def test_question_from_prompt(content, question):
  prompt = [{"role": "system", "content": "Question: not this"},
            {"role": "user", "content": content}]
  assert search_r1_parquet.question_from_prompt(prompt) == question


@pytest.mark.parametrize("prompt,message", [
    ([], "non-empty list"), ([{"role": "system", "content": "x"}], "no user message"),
    ([{"role": "user", "content": "Question:  "}], "question is empty"),
])
def test_question_from_prompt_refuses(prompt, message):
  with pytest.raises(search_r1_parquet.RowError, match=message):
    search_r1_parquet.question_from_prompt(prompt)
