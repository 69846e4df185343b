"""Hugging Face checkpoint directories: load onto a mesh, export back.

Loading reads config.json and one or many safetensors shards (with or without
model.safetensors.index.json) and builds every parameter shard directly on its device from
memory-mapped tensors. Export writes config.json, generation_config.json, safetensors (with
the index when sharded) and the tokenizer, so `transformers.AutoModelForCausalLM` and vLLM
load the result.
"""

import glob
import json
import os

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rag_r1_jax import multihost, timing
from rag_r1_jax.models import config as config_lib
from rag_r1_jax.models import params as params_lib
from rag_r1_jax.models import safetensors_io
from rag_r1_jax.models.decoder import Decoder

INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A checkpoint directory that does not match what it claims to hold."""


def is_complete_export(model_dir: str) -> bool:
  """Whether `model_dir` holds a whole export: config.json, tokenizer.json if any, and every
  weight file complete (an interrupted write or copy leaves a truncated one)."""
  try:
    for name in ("config.json", "tokenizer.json"):
      path = os.path.join(model_dir, name)
      if name == "config.json" or os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          json.load(f)
    for path in set(_tensor_locations(model_dir).values()):
      safetensors_io.SafetensorsFile(path)
  except (OSError, ValueError):
    return False
  return True


def _tensor_locations(model_dir: str) -> dict[str, str]:
  """Tensor name -> shard file path, checking that every listed shard exists."""
  index_path = os.path.join(model_dir, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map", {})
    missing = sorted({s for s in weight_map.values()
                      if not os.path.isfile(os.path.join(model_dir, s))})
    if missing:
      raise CheckpointError(f"{model_dir}: shard file(s) {missing} listed in {INDEX_FILE} are missing")
    return {name: os.path.join(model_dir, shard) for name, shard in weight_map.items()}
  files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
  if not files:
    raise CheckpointError(f"{model_dir}: no *.safetensors files (only safetensors checkpoints "
                          "are read; convert .bin files with transformers first)")
  locations = {}
  for path in files:
    for name in safetensors_io.SafetensorsFile(path).keys():
      locations[name] = path
  return locations


class _Reader:
  """Reads blocks of HF tensors in our layout, keeping shard files open."""

  def __init__(self, locations: dict[str, str]):
    self._locations = locations
    self._files: dict[str, safetensors_io.SafetensorsFile] = {}

  def tensor(self, name: str) -> np.ndarray:
    if name not in self._locations:
      raise CheckpointError(f"tensor {name} is missing from the checkpoint")
    path = self._locations[name]
    if path not in self._files:
      self._files[path] = safetensors_io.SafetensorsFile(path)
    return self._files[path].get(name)

  def shape(self, source: params_lib.ParamSource) -> tuple[int, ...]:
    shape = self.tensor(source.hf_names[0]).shape
    shape = shape[::-1] if source.transpose else shape
    return ((len(source.hf_names),) + shape) if source.stacked else shape

  def block(self, source: params_lib.ParamSource, index: tuple) -> np.ndarray:
    def one(name, idx):
      t = self.tensor(name)
      if source.transpose:
        return np.asarray(t[tuple(reversed(idx))]).T
      return np.asarray(t[idx])
    if not source.stacked:
      return one(source.hf_names[0], index)
    names = source.hf_names[index[0]]
    return np.stack([one(n, index[1:]) for n in names])


def load_hf(model_dir: str, mesh: Mesh, **config_overrides) -> tuple[Decoder, config_lib.DecoderConfig]:
  """Loads a HF Llama / Qwen2 / Qwen3 / Mistral directory onto `mesh`. Overrides: dtype,
  scan_layers, remat..."""
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"model directory {model_dir} does not exist")
  cfg = config_lib.load_hf_config(model_dir, **config_overrides)
  reader = _Reader(_tensor_locations(model_dir))
  abstract = dict(nnx.to_flat_state(nnx.state(params_lib.abstract_model(cfg))))
  for source in params_lib.param_sources(cfg):
    want = abstract[source.path].get_value().shape
    got = reader.shape(source)
    if tuple(got) != tuple(want):
      raise CheckpointError(
          f"{model_dir}: tensor {source.hf_names[0]} has shape {got} in our layout, but config.json "
          f"implies {want} (config/weights mismatch)")
  count = sum(int(np.prod(v.get_value().shape)) for v in abstract.values())
  with timing.announce(f"model: loading {model_dir} ({cfg.num_layers} layers, "
                       f"{count / 1e6:.0f}M parameters, {cfg.param_dtype}) onto the mesh"):
    model = params_lib.place_on_mesh(cfg, mesh, reader.block)
  return model, cfg


def model_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """All parameters under their HF names, in HF layout, gathered to the host; LoRA adapters
  are merged into the projections they adapt."""
  model = params_lib.merge_adapters(model)
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  out = {}
  for source in params_lib.param_sources(model.cfg):
    value = np.asarray(multihost.fetch(flat[source.path][...]))
    layers = value if source.stacked else value[None]
    for name, layer in zip(source.hf_names, layers):
      out[name] = np.ascontiguousarray(layer.T if source.transpose else layer)
  return out


def export_dtype(cfg: config_lib.DecoderConfig, dtype: str | None) -> str:
  """The dtype an export writes: `dtype`, where "auto" is the source checkpoint's declared
  dtype (a scratch model's param_dtype) and None the parameters' dtype."""
  if dtype is None:
    return cfg.param_dtype
  if dtype == "auto":
    return cfg.checkpoint_dtype or cfg.param_dtype
  if dtype not in config_lib.DTYPES:
    raise ValueError(f"export dtype {dtype!r} is not one of auto, {sorted(config_lib.DTYPES)}")
  return dtype


def _end_ids(cfg: config_lib.DecoderConfig, tokenizer) -> list[int]:
  """The end-of-sequence ids of the model config and the tokenizer, sorted."""
  eos = cfg.eos_token_id
  ids = set(eos if isinstance(eos, tuple) else [eos])
  if tokenizer is not None:
    ids.add(tokenizer.eos_token_id)
  return sorted(i for i in ids if i is not None)


def _pad_id(cfg: config_lib.DecoderConfig, tokenizer) -> int | None:
  """The source config's pad_token_id, else the tokenizer's."""
  if cfg.pad_token_id is not None:
    return cfg.pad_token_id
  return getattr(tokenizer, "pad_token_id", None)


def generation_config(cfg: config_lib.DecoderConfig, tokenizer=None) -> dict:
  """The source checkpoint's generation_config.json, else one naming the end-of-sequence ids
  of the config and tokenizer (what vLLM and `generate` stop on), bos and pad."""
  if cfg.generation_config:
    return json.loads(cfg.generation_config)
  end = _end_ids(cfg, tokenizer)
  out = {"bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None
                         else getattr(tokenizer, "bos_token_id", None),
         "eos_token_id": end[0] if len(end) == 1 else (end or None),
         "pad_token_id": _pad_id(cfg, tokenizer)}
  return {k: v for k, v in out.items() if v is not None}


def export_hf(model: Decoder, out_dir: str, tokenizer=None, dtype: str | None = None,
              max_shard_bytes: int = 2 << 30) -> None:
  """Writes config.json, generation_config.json, safetensors shards (+ index when several) and
  the tokenizer.

  dtype: the weights' dtype on disk (float32 | bfloat16 | float16); "auto": the source
  checkpoint's; None: the parameters'. config.json keeps the source's pad_token_id (else the
  tokenizer's). In a multi-process run every process calls it (the parameters are gathered
  from all of them) and process 0 alone writes.
  """
  cfg = model.cfg
  dtype = export_dtype(cfg, dtype)
  tensors = model_tensors(model)
  if not multihost.is_primary():
    return
  os.makedirs(out_dir, exist_ok=True)
  tensors = {k: v.astype(config_lib.DTYPES[dtype], copy=False) for k, v in tensors.items()}
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  if len(shards) == 1:
    safetensors_io.save_file(shards[0], os.path.join(out_dir, "model.safetensors"),
                             metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      safetensors_io.save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
      weight_map.update({name: fname for name in shard})
    total = sum(v.nbytes for v in tensors.values())
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf_config = config_lib.to_hf_dict(cfg)
  hf_config["torch_dtype"] = dtype
  if _pad_id(cfg, tokenizer) is not None:
    hf_config["pad_token_id"] = _pad_id(cfg, tokenizer)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  with open(os.path.join(out_dir, config_lib.GENERATION_CONFIG_FILE), "w") as f:
    json.dump(generation_config(cfg, tokenizer), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
