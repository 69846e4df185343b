"""Builds the policy model and tokenizer that `config.model` / `config.tokenizer` describe."""

import os

from jax.sharding import Mesh
from transformers import AutoTokenizer

from rag_r1_jax.models import config as config_lib
from rag_r1_jax.models import gguf_import, hf_checkpoint, params
from rag_r1_jax.models.decoder import Decoder

# Fields of config.model that change how a loaded checkpoint is run, not what it is.
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "attention_block")


def runtime_overrides(model_config) -> dict:
  """What config.model sets on a loaded checkpoint's DecoderConfig: RUNTIME_FIELDS and the
  LoRA adapters (fresh ones, on top of the checkpoint's weights)."""
  return {**{k: model_config[k] for k in RUNTIME_FIELDS}, **config_lib.lora_fields(model_config)}


def checkpoint_dir(model_config) -> str:
  """The HF directory behind config.model (converting a GGUF file on first use)."""
  if model_config.source == "hf":
    return model_config.path
  if model_config.source == "gguf":
    return gguf_import.convert_gguf(model_config.path)
  raise ValueError(f"config.model.source={model_config.source!r} has no checkpoint directory")


def build_model(model_config, mesh: Mesh, seed: int = 0,
                vocab_size: int | None = None) -> tuple[Decoder, config_lib.DecoderConfig]:
  """A Decoder on `mesh`: random (source=scratch) or loaded (source=hf|gguf)."""
  if model_config.source == "scratch":
    if vocab_size:
      model_config = model_config.copy_and_resolve_references()
      with model_config.unlocked():
        model_config.vocab_size = vocab_size
    cfg = config_lib.from_model_config(model_config)
    return params.init_on_mesh(cfg, mesh, seed), cfg
  if model_config.source in ("hf", "gguf"):
    return hf_checkpoint.load_hf(checkpoint_dir(model_config), mesh,
                                 **runtime_overrides(model_config))
  raise ValueError(f"config.model.source must be scratch, hf or gguf, got {model_config.source!r}")


def load_tokenizer(path: str):
  """A transformers tokenizer from a local directory (never from a hub)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {path} does not exist")
  tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer
