"""Sentence encoder: tokenizer + jitted Flax BERT with bucketed shapes, data-parallel over a mesh.

Texts are tokenised on the host and sorted by length; each batch of `batch_size` neighbours is
padded to the next multiple of `seq_bucket` tokens (16: a batch of 100-111 tokens runs at 112,
where power-of-two buckets ran it at 128). The short remainder batch takes the shortest texts
and is padded to a power-of-two row count. Compiled shapes are thus at most
ceil(max_length / seq_bucket) x (log2(batch_size) + 1).
The batch is split over the mesh's data axes; weights are replicated (a BERT encoder is small).
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rag_r1_jax import multihost, sharding
from rag_r1_jax.retrieval import bert

# E5 and BGE (English v1.5) conventions; matched on the model's name (_family_hint).
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
# Batches computed at once before the oldest is read back: dispatch overlaps compute, and a
# progress callback hears of each batch soon after it finishes.
_IN_FLIGHT = 4
# XLA:CPU: each matmul goes to YNNPACK on its own, softmax, LayerNorm and GELU stay in XLA's
# loops. The default also pulls elementwise neighbours into the library call, which materialises
# broadcast operands ([batch, heads, seq, seq] mask and scale) and ran a MiniLM batch about 1.4x
# slower. Scoped to the encoder's jitted function, not the process.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# progress(texts finished since the last call, what runs now: "tokenising 4096 texts",
# "compiling 64 x 112", "encoding").
ProgressFn = Callable[[int, str], None]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """How a model turns text into a vector: pooling, normalisation, per-side prefixes."""
  pooling: str = "mean"  # mean | cls
  normalize: bool = True
  query_prefix: str = ""  # E5: "query: "; BGE: BGE_QUERY_INSTRUCTION
  passage_prefix: str = ""  # E5: "passage: "
  max_length: int = 256  # tokens, including [CLS] and [SEP]

  def __post_init__(self):
    if self.pooling not in ("mean", "cls"):
      raise ValueError(f"encoder pooling must be 'mean' or 'cls', got {self.pooling!r}")
    if self.max_length < 2:
      raise ValueError(f"encoder max_length must be >= 2, got {self.max_length}")


def infer_spec(model_dir: str, **overrides) -> EncoderSpec:
  """The spec a model directory implies (sentence-transformers files, E5/BGE names) + overrides.

  Overrides with value None are ignored, so config fields left empty keep the inferred value.
  """
  fields: dict = {}
  pooling_cfg = os.path.join(model_dir, "1_Pooling", "config.json")
  if os.path.isfile(pooling_cfg):
    with open(pooling_cfg) as f:
      p = json.load(f)
    fields["pooling"] = "cls" if p.get("pooling_mode_cls_token") else "mean"
  modules = os.path.join(model_dir, "modules.json")
  if os.path.isfile(modules):
    with open(modules) as f:
      fields["normalize"] = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
  st_cfg = os.path.join(model_dir, "sentence_bert_config.json")
  if os.path.isfile(st_cfg):
    with open(st_cfg) as f:
      fields["max_length"] = int(json.load(f).get("max_seq_length", 256))
  name = _family_hint(model_dir)
  if "e5" in name:
    fields.update(query_prefix="query: ", passage_prefix="passage: ", pooling="mean",
                  normalize=True)
  elif "bge" in name and "en" in name:
    fields.update(query_prefix=BGE_QUERY_INSTRUCTION, pooling="cls", normalize=True)
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return EncoderSpec(**fields)


def model_name(model_dir: str) -> str:
  """The encoder's name: its directory's, or its parent's for a sentence-transformers
  package's `<name>/model` directory."""
  path = os.path.normpath(model_dir)
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if name == "model" else name


def _family_hint(model_dir: str) -> str:
  """The names E5 / BGE are recognised by: model_name and config.json's `_name_or_path`."""
  hint = model_name(model_dir)
  config_path = os.path.join(model_dir, "config.json")
  if os.path.isfile(config_path):
    with open(config_path) as f:
      source = json.load(f).get("_name_or_path")
    if isinstance(source, str):
      hint += " " + source.rstrip("/").split("/")[-1]
  return hint.lower()


def seq_bucket(length: int, max_length: int, step: int) -> int:
  """The smallest multiple of `step` >= length, capped at max_length."""
  return min(-(-max(length, 1) // step) * step, max_length)


def batch_bucket(n: int, batch_size: int, multiple: int) -> int:
  """The smallest power of two >= n, capped at batch_size, rounded up to `multiple`."""
  b = min(1 << max(0, n - 1).bit_length(), batch_size)
  return -(-b // multiple) * multiple


@functools.cache
def _compiler_options() -> dict[str, str] | None:
  """_CPU_OPTIONS on the CPU backend when this jaxlib knows them, else None (XLA's defaults)."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except  # an option this XLA does not have
    return None
  return _CPU_OPTIONS


def _embed(graphdef, state, input_ids, attention_mask, *, pooling: str, normalize: bool):
  """Pure: [batch, seq] ids and mask -> [batch, d] embeddings."""
  model = nnx.merge(graphdef, state)
  return bert.sentence_embedding(model, input_ids, attention_mask, pooling, normalize)


class SentenceEncoder:
  """Encodes queries and passages with a BERT-family model; `hash` identifies model + spec."""

  def __init__(self, model: bert.BertModel, tokenizer, spec: EncoderSpec, name: str,
               weights_hash: str, mesh: Mesh | None = None, batch_size: int = 64,
               seq_bucket: int = 16):
    if batch_size < 1 or seq_bucket < 1:
      raise ValueError(f"encoder batch_size ({batch_size}) and seq_bucket ({seq_bucket}) must "
                       "be >= 1")
    self.spec = spec
    self.tokenizer = tokenizer
    self.name = name
    self.dim = model.cfg.hidden_size
    self.batch_size = batch_size
    self.seq_bucket = seq_bucket
    self.mesh = mesh
    self._compiled: set[tuple[int, int]] = set()  # (batch, seq) shapes run so far
    if spec.max_length > model.cfg.max_position_embeddings:
      raise ValueError(f"encoder max_length {spec.max_length} exceeds the model's "
                       f"max_position_embeddings {model.cfg.max_position_embeddings}")
    graphdef, state = nnx.split(model)
    self._data_ways = 1
    if mesh is not None:
      self._data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
      state = multihost.put(state, sharding.replicated(mesh))
    self._state = state
    self._fn = jax.jit(functools.partial(_embed, graphdef, pooling=spec.pooling,
                                         normalize=spec.normalize),
                       compiler_options=_compiler_options())
    spec_json = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    self.hash = hashlib.sha256((weights_hash + spec_json).encode()).hexdigest()[:16]

  @classmethod
  def from_pretrained(cls, model_dir: str, spec: EncoderSpec | None = None,
                      mesh: Mesh | None = None, batch_size: int = 64,
                      seq_bucket: int = 16) -> "SentenceEncoder":
    """Loads config.json, model.safetensors and the tokenizer from a local directory."""
    from transformers import AutoTokenizer  # the tokenizer only; no torch import
    if not os.path.isdir(model_dir):
      raise FileNotFoundError(f"encoder directory {model_dir} does not exist")
    spec = spec or infer_spec(model_dir)
    model = bert.load_bert(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    weights_hash = _file_digest(os.path.join(model_dir, "model.safetensors"))
    name = model_name(model_dir)
    return cls(model, tokenizer, spec, name, weights_hash, mesh, batch_size, seq_bucket)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, truncated to spec.max_length, with [CLS]/[SEP]."""
    out = self.tokenizer(list(texts), truncation=True, max_length=self.spec.max_length,
                         padding=False, return_attention_mask=False,
                         return_token_type_ids=False)
    return out["input_ids"]

  def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
    """[n, dim] float32 query embeddings (with the spec's query prefix)."""
    return self.encode([self.spec.query_prefix + q for q in queries])

  def encode_passages(self, passages: Sequence[str],
                      progress: ProgressFn | None = None) -> np.ndarray:
    """[n, dim] float32 passage embeddings (with the spec's passage prefix)."""
    return self.encode([self.spec.passage_prefix + p for p in passages], progress)

  def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
    """[n, dim] float32 embeddings of texts as given; batches are formed by token length.

    `progress` hears what runs (tokenising, compiling a new shape) and each finished batch.
    """
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    report = progress or (lambda done, status: None)
    report(0, f"tokenising {len(texts)} texts")
    ids = self.tokenize(texts)
    order = np.argsort([len(t) for t in ids], kind="stable")
    out = np.zeros((len(texts), self.dim), np.float32)
    pending: list[tuple[np.ndarray, jax.Array]] = []  # dispatched, not yet read back

    def read_oldest():
      rows, emb = pending.pop(0)
      out[rows] = np.asarray(emb)[:len(rows)]
      report(len(rows), "encoding")

    # The remainder batch comes first, with the shortest texts: its padding rows are short too.
    ends = list(range(len(order) % self.batch_size or self.batch_size, len(order) + 1,
                      self.batch_size))
    for start, end in zip([0] + ends[:-1], ends):
      rows = order[start:end]
      pending.append((rows, self._encode_batch([ids[r] for r in rows], report)))
      if len(pending) > _IN_FLIGHT:
        read_oldest()
    while pending:
      read_oldest()
    return out

  def _encode_batch(self, ids: list[list[int]], report: ProgressFn) -> jax.Array:
    """Pads one batch to its (batch, seq) bucket and dispatches the jitted function.

    Returns [bucket_batch, dim]; rows past len(ids) are padding.
    """
    seq = seq_bucket(max(len(t) for t in ids), self.spec.max_length, self.seq_bucket)
    batch = batch_bucket(len(ids), self.batch_size, self._data_ways)
    if (batch, seq) not in self._compiled:
      self._compiled.add((batch, seq))
      report(0, f"compiling {batch} x {seq}")
    input_ids = np.zeros((batch, seq), np.int32)  # [batch, seq]
    mask = np.zeros((batch, seq), np.int32)
    for i, t in enumerate(ids):
      input_ids[i, :len(t)] = t
      mask[i, :len(t)] = 1
    mask[len(ids):, 0] = 1  # padding rows attend to one token: no NaN from empty softmax
    if self.mesh is not None:
      input_ids = sharding.put_on_mesh(input_ids, self.mesh, ("batch", "seq"))
      mask = sharding.put_on_mesh(mask, self.mesh, ("batch", "seq"))
    return self._fn(self._state, input_ids, mask)


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  return digest.hexdigest()
