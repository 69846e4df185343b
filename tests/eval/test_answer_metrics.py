"""Answer metrics on hand-made cases, including the quirks that change scores."""

import pytest

from rag_r1_jax.data import prompts
from rag_r1_jax.eval import answer_metrics as am


@pytest.mark.parametrize("text,expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   APPLE, a day!  ", "apple day"),
    ("theatre", "theatre"),  # an article only as a whole word
    ("U.S.A.", "usa"),
    ("rock-'n'-roll", "rocknroll"),
    ("Paris\n\tFrance", "paris france"),
    ("", ""),
    ("The", ""),
])
def test_normalize_answer(text, expected):
  assert am.normalize_answer(text) == expected


def test_exact_match_articles_punctuation_and_several_golds():
  assert am.exact_match("the Beatles.", ["Beatles"]) == 1.0
  assert am.exact_match("Beatles", ["The Rolling Stones", "the beatles"]) == 1.0
  assert am.exact_match("Beatles band", ["Beatles"]) == 0.0
  assert am.exact_match("Paris", "Paris") == 1.0  # a bare string is one gold
  assert am.exact_match("P", "Paris") == 0.0


def test_no_answer_scores_zero_everywhere():
  for metric in (am.exact_match, am.f1, am.cover_exact_match, am.sub_exact_match):
    assert metric(None, ["Paris"]) == 0.0
  assert am.exact_match("", ["Paris"]) == 0.0
  assert am.f1("", ["Paris"]) == 0.0


def test_f1_token_overlap_max_over_golds():
  # pred {barack, obama, jr}, gold {barack, obama}: P=2/3, R=1 -> F1=0.8.
  assert am.f1("Barack Obama Jr.", ["Barack Obama"]) == pytest.approx(0.8)
  # The better of two golds wins: "obama" alone gives P=1/3, R=1 -> 0.5 < 0.8.
  assert am.f1("Barack Obama Jr.", ["Obama", "Barack Obama"]) == pytest.approx(0.8)
  assert am.f1("the cat sat", ["a dog"]) == 0.0
  # Counts are clipped per token: pred [x x y], gold [x y y] share x once, y once: P=R=2/3.
  assert am.f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
  assert am.f1("The", ["an"]) == 1.0  # both normalise to nothing


def test_cover_exact_match_whole_token_spans():
  assert am.cover_exact_match("He was born in 1990 in Paris.", ["1990"]) == 1.0
  assert am.cover_exact_match("He was born in 1990.", ["199"]) == 0.0
  assert am.cover_exact_match("the new york yankees won", ["New York Yankees"]) == 1.0
  assert am.cover_exact_match("york new yankees", ["New York"]) == 0.0
  assert am.cover_exact_match("anything", ["The"]) == 0.0
  assert am.cover_exact_match("Paris", ["London", "paris!"]) == 1.0


def test_sub_exact_match_is_search_r1_character_substring():
  assert am.sub_exact_match("He was born in 1990.", ["199"]) == 1.0  # cover-EM: 0
  assert am.sub_exact_match("He was born in 1990 in Paris.", ["1990"]) == 1.0
  assert am.sub_exact_match("the new york yankees won", ["New York Yankees"]) == 1.0
  assert am.sub_exact_match("york new yankees", ["New York"]) == 0.0
  assert am.sub_exact_match("Parisian", ["paris!"]) == 1.0
  assert am.sub_exact_match("anything", ["The"]) == 1.0  # "" is in every string (Search-R1)
  assert am.sub_exact_match("", ["Paris"]) == 0.0


def test_extract_last_answer_closes_at_the_first_close_tag():
  assert am.extract_last_answer("<answer>London</answer> blah </answer>") == "London"
  assert am.extract_last_answer("<answer>a</answer> x </answer> <answer> b </answer>") == "b"
  assert am.extract_last_answer("<answer>a</answer></answer></answer>") == "a"


def test_extract_last_answer_takes_last_complete_block():
  text = "<think>a</think><answer> Rome </answer> then <answer>\n Paris \n</answer>"
  assert am.extract_last_answer(text) == "Paris"
  assert am.extract_last_answer("<answer> Rome </answer> <answer> Par") == "Rome"
  assert am.extract_last_answer("<think>no answer</think>") is None
  assert am.extract_last_answer("</answer> Paris <answer>") is None
  assert am.extract_last_answer("<answer></answer>") == ""
  assert am.extract_last_answer("<answer> x <answer> y </answer>") == "y"


def test_extract_ignores_retrieved_information():
  text = ("<think>t</think><search> q </search>\n<information>Doc 1: <answer> Fake "
          "</answer></information>\n<think>hmm</think>")
  assert am.extract_last_answer(text) is None
  text += "<answer> Real </answer>"
  assert am.extract_last_answer(text) == "Real"


def test_prompt_example_answer_is_never_read():
  prompt = prompts.build_prompt("What is the capital of China", "paper_sq")
  assert "<answer> Beijing </answer>" in prompt
  response = "<think>I do not know.</think>"
  assert am.extract_last_answer(response) is None
  assert am.exact_match(am.extract_last_answer(response), ["Beijing"]) == 0.0
  # Reading prompt + response (Search-R1's bug) would have scored 1.
  assert am.exact_match(am.extract_last_answer(prompt + response), ["Beijing"]) == 1.0


def test_non_string_gold_is_an_error():
  with pytest.raises(TypeError, match="must be strings"):
    am.exact_match("1", [1])
