"""The stop-string automaton finds a string however it is split into tokens."""

import jax.numpy as jnp
import numpy as np

from rag_r1_jax.sampling import stop_strings
from tests.sampling.toy import toy_tokenizer


def _ends_inside(text: str, pattern: str, start: int) -> bool:
  """Does an occurrence of pattern end after position `start` of text?"""
  return any(text[i - len(pattern):i] == pattern
             for i in range(max(start + 1, len(pattern)), len(text) + 1))


def test_kmp_tables_match_python_search_on_every_split():
  texts = ["</search>", "</", "search>", "<", "/", "s", "earch", ">", "x</sea", "rch>\n", "<</",
           "</search></", "answer>", "a", "</answer>", "", "sss"]
  tables = stop_strings.build_stop_tables(("</search>", "</answer>"), texts)
  rng = np.random.RandomState(0)
  checked = 0
  for _ in range(400):
    seq = rng.randint(0, len(texts), rng.randint(1, 14))
    states = jnp.zeros((1, 2), jnp.int32)
    text = ""
    for tid in seq:
      states, matched = stop_strings.advance(states, jnp.asarray([tid]),
                                             jnp.asarray(tables.next_state),
                                             jnp.asarray(tables.matched))
      before = len(text)
      text += texts[tid]
      for s, pattern in enumerate(tables.strings):
        assert bool(matched[0, s]) == _ends_inside(text, pattern, before), (pattern, text)
        checked += bool(matched[0, s])
  assert checked > 50  # the random sequences do complete the strings often


def test_real_tokenizer_tokenisations_of_stop_strings():
  tokenizer = toy_tokenizer()
  texts = stop_strings.token_strings(tokenizer, len(tokenizer))
  tables = stop_strings.build_stop_tables(("</search>",), texts)
  for text in ["<search> q </search>", "abc</search>", "</sear</search>"]:
    ids = tokenizer.encode(text)
    states = jnp.zeros((1, 1), jnp.int32)
    flags = []
    for tid in ids:
      states, matched = stop_strings.advance(states, jnp.asarray([tid]),
                                             jnp.asarray(tables.next_state),
                                             jnp.asarray(tables.matched))
      flags.append(bool(matched[0, 0]))
    assert flags[-1] and sum(flags) == 1, (text, flags)
