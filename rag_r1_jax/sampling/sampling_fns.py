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


def sample(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
  """logits [batch, vocab] float32 -> tokens [batch] int32."""
  if params.greedy:
    return first_argmax(logits)
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


def first_argmax(logits: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis as two plain reductions: [batch, vocab] -> [batch] int32.

  XLA:CPU runs argmax's (value, index) reduction unvectorised: ~12 ms per decode step for
  64 x 32000 logits, against well under 1 ms for a max and a min. Ties go to the first index,
  as in jnp.argmax; a row whose maximum is NaN gets its first NaN, as in jnp.argmax.
  """
  vocab = logits.shape[-1]
  nan = jnp.isnan(logits)
  best = jnp.max(jnp.where(nan, -jnp.inf, logits), axis=-1, keepdims=True)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, logits == best)
  index = jnp.arange(vocab, dtype=jnp.int32)
  return jnp.min(jnp.where(hit, index, vocab), axis=-1).astype(jnp.int32)


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log p(token) under the unmodified policy (temperature 1): [batch] float32."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  return jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - logz
