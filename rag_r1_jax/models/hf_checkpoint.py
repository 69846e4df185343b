"""Hugging Face checkpoint directories: load onto a mesh, export back.

Loading reads config.json and one or many safetensors shards (with or without
model.safetensors.index.json) and builds every parameter shard directly on its device from
memory-mapped tensors. Export writes config.json, safetensors and the tokenizer, so
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads the result.
"""

import glob
import json
import os

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rag_r1_jax import multihost
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
  """Loads a HF Llama / Qwen2 directory onto `mesh`. Overrides: dtype, scan_layers, remat..."""
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
  model = params_lib.place_on_mesh(cfg, mesh, reader.block)
  return model, cfg


def model_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """All parameters under their HF names, in HF layout, gathered to the host."""
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  out = {}
  for source in params_lib.param_sources(model.cfg):
    value = np.asarray(multihost.fetch(flat[source.path][...]))
    layers = value if source.stacked else value[None]
    for name, layer in zip(source.hf_names, layers):
      out[name] = np.ascontiguousarray(layer.T if source.transpose else layer)
  return out


def export_hf(model: Decoder, out_dir: str, tokenizer=None, dtype: str | None = None,
              max_shard_bytes: int = 2 << 30) -> None:
  """Writes config.json, safetensors shards (+ index when several) and the tokenizer.

  In a multi-process run every process calls it (the parameters are gathered from all of
  them) and process 0 alone writes.
  """
  cfg = model.cfg
  tensors = model_tensors(model)
  if not multihost.is_primary():
    return
  os.makedirs(out_dir, exist_ok=True)
  if dtype is not None:
    tensors = {k: v.astype(config_lib.DTYPES[dtype]) for k, v in tensors.items()}
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
  if dtype is not None:
    hf_config["torch_dtype"] = dtype
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
