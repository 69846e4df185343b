"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)."""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How tokens are drawn; hashable, a static argument of the decode loop."""
  greedy: bool = False
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0  # 0: no top-k cut

  @classmethod
  def from_config(cls, sampling_config, greedy: bool | None = None) -> "SamplingParams":
    return cls(greedy=bool(sampling_config.greedy if greedy is None else greedy),
               temperature=float(sampling_config.temperature),
               top_p=float(sampling_config.top_p), top_k=int(sampling_config.top_k))


def sample_with_logprob(logits: jax.Array, rng: jax.Array,
                        params: SamplingParams) -> tuple[jax.Array, jax.Array]:
  """logits [batch, vocab] float32 -> tokens [batch] int32 and their log-probs [batch] float32.

  A sampled token's log-prob is taken under softmax(logits / temperature), the distribution
  the trainer scores it with (training/logprobs.py, `rl` temperature): top-k / top-p only
  choose which tokens may be drawn and are not renormalised into it, as in veRL. Greedy
  decoding reports the temperature-1 log-prob of the argmax.
  """
  if params.greedy:
    return greedy(logits)
  tokens = sample(logits, rng, params)
  return tokens, token_logprob(logits / params.temperature, tokens)


def sample(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
  """logits [batch, vocab] float32 -> tokens [batch] int32."""
  if params.greedy:
    return greedy(logits)[0]
  logits = logits / params.temperature
  if params.top_k > 0:
    kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if params.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    keep = before < params.top_p  # always keeps the top token
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# Greedy selection reads the logits in chunks of this many entries (see `greedy`).
GREEDY_CHUNK = 128


def greedy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """jnp.argmax over the last axis and its log-prob: [batch, vocab] -> [batch] int32, float32.

  Two passes over the logits: the max of each chunk of GREEDY_CHUNK entries, and the sum of
  exponentials below the overall max; the argmax is then found among the chunk maxima (the
  first chunk holding the max) and inside that one chunk, so no full-width index array is
  made. jnp.argmax's (value, index) reduction runs unvectorised on XLA:CPU, and three
  full-width reductions (max, first index as a float min over a [batch, vocab] select, sum of
  exponentials) made XLA write two [batch, vocab] temporaries (docs/experiment_log.md). The
  argmax token's logit is the max, so its log-prob is -log(sum of exponentials). XLA:CPU's max does not reliably propagate NaN, so a
  row with a NaN or infinite logit (seen as a non-finite sum, or no index found) is redone
  with jnp.argmax and jax.nn.logsumexp inside a lax.cond that finite rows skip. Ties go to the
  first index and a NaN row to its first NaN, as in jnp.argmax.
  """
  batch, vocab = logits.shape
  chunks = -(-vocab // GREEDY_CHUNK)
  pad = chunks * GREEDY_CHUNK - vocab
  padded = jnp.pad(logits, ((0, 0), (0, pad)), constant_values=-jnp.inf) if pad else logits
  by_chunk = padded.reshape(batch, chunks, GREEDY_CHUNK)
  chunk_max = jnp.max(by_chunk, axis=-1)  # [batch, chunks]
  best = jnp.max(chunk_max, axis=-1)  # [batch]
  chunk = jnp.argmax(chunk_max, axis=-1)  # the first chunk holding the max
  inside = jnp.take_along_axis(by_chunk, chunk[:, None, None], axis=1)[:, 0]  # [batch, chunk]
  tokens = (chunk * GREEDY_CHUNK + jnp.argmax(inside, axis=-1)).astype(jnp.int32)
  sum_exp = jnp.sum(jnp.exp(logits - best[:, None]), axis=-1)
  logprobs = -jnp.log(sum_exp)
  odd = ~jnp.isfinite(sum_exp) | (tokens >= vocab)

  def exact(found):
    argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (jnp.where(odd, argmax, found[0]),
            jnp.where(odd, token_logprob(logits, argmax), found[1]))
  return jax.lax.cond(jnp.any(odd), exact, lambda found: found, (tokens, logprobs))


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log softmax(logits)[token]: logits [batch, vocab], tokens [batch] -> [batch] float32."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  return jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - logz
