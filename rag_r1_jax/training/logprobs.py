"""Per-token log-probabilities and entropies of a trajectory batch under a decoder.

Alignment: `logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t])`, read from the logits at
position t - 1; position 0 has no prediction and gets 0. `entropy[b, t]` is the entropy of
the same distribution (the one token t was sampled from). Both are float32 whatever the
compute dtype. With `temperature` != 1 the distribution is softmax(logits / temperature):
the one an RL rollout sampled from (sampling_fns.sample_with_logprob takes the same).

Memory: the log-softmax is never materialised. The token's logit is gathered and the
logsumexp subtracted, and the entropy is `lse - sum(softmax * logits)`; XLA fuses both
reductions, so the only [batch, seq, vocab] float32 array is the logits themselves. With
`chunk > 0` even that is avoided: the logits are projected from the final hidden states
`chunk` positions at a time inside a rematerialised scan (peak [batch, chunk, vocab]), which
is what a 150k vocabulary over thousands of tokens needs.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from rag_r1_jax.models.decoder import Decoder

# chunk = -1 (config.model.logprob_chunk's default): AUTO_CHUNK positions at a time when the
# whole [batch, seq, vocab] float32 logits would hold more than AUTO_MAX_LOGITS entries (1 GiB).
AUTO_CHUNK = 512
AUTO_MAX_LOGITS = 1 << 28


def resolve_chunk(chunk: int, batch: int, seq: int, vocab: int) -> int:
  """The chunk `token_logprobs` uses: `chunk` itself unless it is -1 (automatic)."""
  if chunk != -1:
    return chunk
  return AUTO_CHUNK if batch * seq * vocab > AUTO_MAX_LOGITS and seq > AUTO_CHUNK else 0


def logprobs_from_logits(logits: jax.Array, targets: jax.Array,
                         temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(log p(target), entropy) [..., n] float32 from logits [..., n, vocab], targets [..., n],
  under softmax(logits / temperature)."""
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / temperature
  lse = jax.nn.logsumexp(logits, axis=-1)  # [..., n]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  probs = jnp.exp(logits - lse[..., None])
  entropy = lse - jnp.sum(probs * logits, axis=-1)
  return target_logit - lse, entropy


def _shift_in(x: jax.Array) -> jax.Array:
  """x [batch, seq] computed at position t - 1 moved to position t; position 0 becomes 0."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def _next_tokens(tokens: jax.Array) -> jax.Array:
  """targets [batch, seq]: tokens[b, t + 1] (0 at the last position, whose output is dropped)."""
  return jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))


def _chunked(model: Decoder, hidden: jax.Array, targets: jax.Array, chunk: int,
             temperature: float) -> tuple[jax.Array, jax.Array]:
  """logprobs_from_logits over [batch, seq] with the logits built `chunk` positions at a time."""
  batch, seq, width = hidden.shape
  n = -(-seq // chunk)
  pad = n * chunk - seq
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  hs = hidden.reshape(batch, n, chunk, width).swapaxes(0, 1)  # [n, batch, chunk, hidden]
  ys = targets.reshape(batch, n, chunk).swapaxes(0, 1)  # [n, batch, chunk]

  @jax.checkpoint
  def one(h, y):
    return logprobs_from_logits(model.logits(h), y, temperature)

  def body(carry, xs):
    return carry, one(*xs)

  _, (lp, ent) = jax.lax.scan(body, None, (hs, ys))  # [n, batch, chunk] each
  unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, n * chunk)[:, :seq]  # noqa: E731
  return unchunk(lp), unchunk(ent)


def token_logprobs(model: Decoder, batch: Mapping[str, jax.Array], chunk: int = 0,
                   temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(logprobs, entropy), both [batch, seq] float32, from one forward pass over `batch`.

  batch: tokens [batch, seq] int32, positions [batch, seq] int32, attention_mask [batch, seq].
  chunk: 0 projects all logits at once; > 0 projects `chunk` positions at a time; -1 chooses
    (`resolve_chunk`) from the shapes.
  temperature: static; the logits are divided by it (RL: the rollout's sampling temperature).
  Values at padding positions are computed but meaningless; callers mask them.
  """
  tokens = batch["tokens"]
  targets = _next_tokens(tokens)
  chunk = resolve_chunk(chunk, *tokens.shape, model.cfg.vocab_size)
  kwargs = dict(positions=batch["positions"], attention_mask=batch["attention_mask"])
  if chunk > 0:
    _, _, hidden = model(tokens, return_hidden=True, **kwargs)  # unused logits: dead code
    lp, ent = _chunked(model, hidden, targets, chunk, temperature)
  else:
    logits, _ = model(tokens, **kwargs)  # [batch, seq, vocab] float32
    lp, ent = logprobs_from_logits(logits, targets, temperature)
  return _shift_in(lp), _shift_in(ent)


def shift_values(values: jax.Array) -> jax.Array:
  """Per-position outputs [batch, seq] moved one step right (the state before token t)."""
  return _shift_in(values)
