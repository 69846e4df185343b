"""A character-level tokenizer for tests: the protocol's tags and chat roles as single tokens."""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rag_r1_jax.protocol import TAGS

SPECIAL = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?:;'\"!-\n{}[]()<>/_"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
  """One token per character (a vocabulary under 128), each tag and role one token, a chat
  template; `<|end|>` ends a turn and pads."""
  vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(SPECIAL)}}
  vocab.update({c: len(vocab) + i for i, c in enumerate(CHARS)})
  raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  raw.decoder = decoders.Fuse()
  raw.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL])
  raw.add_tokens([AddedToken(t, normalized=False) for t in TAGS])
  tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>", unk_token="<unk>",
                                pad_token="<unk>")
  tok.chat_template = TEMPLATE
  return tok
