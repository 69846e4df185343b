"""Exact multi-token stop strings inside jit, whatever the tokenisation.

Each stop string gets a Knuth-Morris-Pratt automaton over characters. For every automaton
state and every vocabulary token we precompute (on the host, vectorised over the vocabulary)
the state after reading the token's text and whether the string completed inside it. In jit a
decode step is then two table lookups per row and stop string: `</search>` is found whether it
arrives as one token, as `</`+`search`+`>`, or glued to other text as ` </search>\n`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def _kmp_dfa(pattern: str) -> tuple[list[str], np.ndarray]:
  """Alphabet (pattern chars + 'other') and the DFA [states, alphabet] of the KMP automaton."""
  alphabet = sorted(set(pattern))
  index = {c: i for i, c in enumerate(alphabet)}
  m = len(pattern)
  dfa = np.zeros((m + 1, len(alphabet) + 1), np.int32)  # last column: any other character
  fallback = 0
  for state in range(m + 1):
    for c, i in index.items():
      if state < m and pattern[state] == c:
        dfa[state, i] = state + 1
      else:
        dfa[state, i] = dfa[fallback, i] if state > 0 else 0
    if 0 < state < m:
      fallback = dfa[fallback, index[pattern[state]]]
  # state m (a full match) continues like the longest proper border
  return alphabet, dfa


def token_strings(tokenizer, vocab_size: int) -> list[str]:
  """The text each token id contributes when decoded (byte-level tokens made readable)."""
  out = []
  for i in range(vocab_size):
    try:
      out.append(tokenizer.decode([i], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False))
    except Exception:  # ids past the tokenizer's vocabulary (padded embeddings)
      out.append("")
  return out


@dataclasses.dataclass(frozen=True)
class StopTables:
  """Per-stop-string transition and match tables over the vocabulary."""
  strings: tuple[str, ...]
  next_state: np.ndarray  # [num_strings, max_len + 1, vocab] int16
  matched: np.ndarray  # [num_strings, max_len + 1, vocab] bool


def build_stop_tables(strings: tuple[str, ...], token_texts: list[str]) -> StopTables:
  """Precomputes the automata of `strings` over tokens whose texts are `token_texts`."""
  vocab = len(token_texts)
  max_len = max(len(s) for s in strings)
  width = max(1, max(len(t) for t in token_texts))
  chars = np.full((vocab, width), "", dtype=object)
  for i, text in enumerate(token_texts):
    for j, c in enumerate(text):
      chars[i, j] = c
  lengths = np.array([len(t) for t in token_texts])
  next_state = np.zeros((len(strings), max_len + 1, vocab), np.int16)
  matched = np.zeros((len(strings), max_len + 1, vocab), bool)
  for s, pattern in enumerate(strings):
    alphabet, dfa = _kmp_dfa(pattern)
    lookup = {c: i for i, c in enumerate(alphabet)}
    other = len(alphabet)
    codes = np.vectorize(lambda c: lookup.get(c, other), otypes=[np.int32])(chars)
    m = len(pattern)
    for start in range(m + 1):
      state = np.full(vocab, start, np.int32)
      hit = np.zeros(vocab, bool)
      for j in range(width):
        active = j < lengths
        stepped = dfa[state, codes[:, j]]
        state = np.where(active, stepped, state)
        hit |= active & (state == m)
      next_state[s, start] = state
      matched[s, start] = hit
  return StopTables(tuple(strings), next_state, matched)


@functools.lru_cache(maxsize=4)
def cached_stop_tables(strings: tuple[str, ...], token_texts: tuple[str, ...]) -> StopTables:
  """build_stop_tables, computed once per (strings, vocabulary): every Sampler of a run shares it."""
  return build_stop_tables(strings, list(token_texts))


@jax.jit
def advance(states: jax.Array, tokens: jax.Array, next_state: jax.Array,
            matched: jax.Array) -> tuple[jax.Array, jax.Array]:
  """states [batch, strings] int32, tokens [batch] -> (new states, matched [batch, strings])."""
  s = jnp.arange(states.shape[1])[None, :]
  t = tokens[:, None]
  return next_state[s, states, t].astype(jnp.int32), matched[s, states, t]
