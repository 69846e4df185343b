"""A character-level tokenizer with a few word tokens, and a decoder scripted to follow a
bigram table under greedy decoding (random small layers on top, so caches matter)."""

import string

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx
from ml_collections import ConfigDict
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from rag_r1_jax import multihost, sharding
from rag_r1_jax.models import params
from rag_r1_jax.models.config import DecoderConfig

WORDS = ["<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>",
         "alpha", "beta", "paris", "Q:", "A:", "B:"]
EOS = "<eos>"


def toy_tokenizer() -> transformers.PreTrainedTokenizerFast:
  chars = [c for c in string.printable if c not in "\x0b\x0c"]
  vocab = {EOS: 0}
  for piece in chars:
    vocab.setdefault(piece, len(vocab))
  raw = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
  raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
  raw.decoder = decoders.Fuse()
  raw.add_tokens([AddedToken(w, normalized=False) for w in WORDS])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, pad_token=EOS)


def bigram_model(tokenizer, successor: dict[str, str], default: str, *, mesh=None, seed=0,
                 hidden: int = 128, layers: int = 2):
  """A Decoder whose greedy next token after token a is successor[a] (else `default`)."""
  vocab = len(tokenizer)
  assert hidden >= vocab, (hidden, vocab)
  cfg = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden,
                      num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4)
  mesh = mesh or sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                                    jax.devices()[:1])
  model = params.init_on_mesh(cfg, mesh, seed)
  ids = lambda t: tokenizer.convert_tokens_to_ids(t)
  embed = np.zeros((vocab, hidden), np.float32)
  embed[np.arange(vocab), np.arange(vocab)] = 8.0
  head = np.zeros((hidden, vocab), np.float32)
  for a in range(vocab):
    b = successor.get(tokenizer.convert_ids_to_tokens(a), default)
    head[a, ids(b)] = 1.0
  # Small random noise keeps logprobs non-trivial and makes every position's logits differ.
  head += np.random.RandomState(seed).normal(0, 0.01, head.shape).astype(np.float32)
  shard = lambda x, like: multihost.put(x, like.sharding)  # noqa: E731
  model.embed.set_value(shard(embed, model.embed[...]))
  model.lm_head.set_value(shard(head, model.lm_head[...]))
  return model


def fork_after(model, tokenizer, token: str, successors: dict[str, float]) -> None:
  """Makes the greedy choice after `token` uncertain: its next-token logits become
  `successors` (token -> weight on the one-hot embedding), 0 elsewhere."""
  head = np.array(model.lm_head[...])
  row = tokenizer.convert_tokens_to_ids(token)
  head[row] = 0.0
  for successor, weight in successors.items():
    head[row, tokenizer.convert_tokens_to_ids(successor)] = weight
  model.lm_head.set_value(multihost.put(head, model.lm_head[...].sharding))
