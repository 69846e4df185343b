"""HF checkpoint round trips and the errors a user can cause with a bad directory."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint, params, safetensors_io
from rag_r1_jax.models.config import DecoderConfig
from tests.models.hf_fixtures import tiny_hf_model, torch_logits


def _mesh(n=1, **axes):
  shape = {"data": 1, "fsdp": 1, "tensor": 1, **axes}
  return sharding.make_mesh(ConfigDict(shape), jax.devices()[:n])


@pytest.mark.parametrize("arch,scan", [("llama", False), ("qwen2", True)])
def test_load_export_reload_in_transformers(tmp_path, arch, scan):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  ref = tiny_hf_model(arch, tied=False, out_dir=src, bias=True)
  model, _ = hf_checkpoint.load_hf(src, _mesh(), scan_layers=scan)
  # Tiny shards force the multi-file layout with an index.
  hf_checkpoint.export_hf(model, out, max_shard_bytes=40_000)
  assert os.path.isfile(os.path.join(out, hf_checkpoint.INDEX_FILE))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  tokens = np.random.RandomState(0).randint(0, 97, (2, 11))
  np.testing.assert_allclose(torch_logits(reloaded, tokens), torch_logits(ref, tokens), atol=1e-6)
  ours_again, _ = hf_checkpoint.load_hf(out, _mesh())
  np.testing.assert_allclose(np.asarray(ours_again(jnp.asarray(tokens))[0]),
                             torch_logits(ref, tokens), atol=1e-4)


def _word_tokenizer(**special):
  """Token w{i} -> id i for i < 97; `special` names tokens, e.g. eos_token="w3"."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {f"w{i}": i for i in range(97)}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0", **special)


def _read(directory, name):
  with open(os.path.join(directory, name)) as f:
    return json.load(f)


@pytest.mark.parametrize("arch,kw", [("qwen3", dict(head_dim=24)),
                                     ("mistral", dict(sliding_window=5))])
def test_export_vllm_can_serve(tmp_path, arch, kw):
  """A bfloat16 source exports as bfloat16 ("auto"), sharded with its index, carrying its
  generation_config.json and pad_token_id; transformers loads it with our logits."""
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  tiny_hf_model(arch, False, src, save_dtype=torch.bfloat16, pad_token_id=4, eos_token_id=3, **kw)
  generation = {"eos_token_id": [3, 5], "do_sample": True, "temperature": 0.7, "top_p": 0.8}
  with open(os.path.join(src, "generation_config.json"), "w") as f:
    json.dump(generation, f)
  model, cfg = hf_checkpoint.load_hf(src, _mesh())
  assert (cfg.param_dtype, cfg.checkpoint_dtype, cfg.pad_token_id) == ("float32", "bfloat16", 4)
  hf_checkpoint.export_hf(model, out, tokenizer=_word_tokenizer(eos_token="w3"), dtype="auto",
                          max_shard_bytes=20_000)

  assert _read(out, "generation_config.json") == generation
  config = _read(out, "config.json")
  assert (config["torch_dtype"], config["pad_token_id"], config["eos_token_id"]) == (
      "bfloat16", 4, 3)
  index = _read(out, hf_checkpoint.INDEX_FILE)
  shards = {name: safetensors_io.SafetensorsFile(os.path.join(out, name))
            for name in set(index["weight_map"].values())}
  assert len(shards) > 1
  assert index["metadata"]["total_size"] == sum(
      f.get(k).nbytes for f in shards.values() for k in f.keys())
  assert {k for f in shards.values() for k in f.keys()} == set(index["weight_map"])
  assert {f.get(k).dtype.name for f in shards.values() for k in f.keys()} == {"bfloat16"}

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert reloaded.generation_config.temperature == 0.7
  assert reloaded.config.pad_token_id == 4
  tokens = np.random.RandomState(0).randint(0, 97, (2, 13))
  ours = np.asarray(model(jnp.asarray(tokens))[0])
  # The source's weights are bfloat16 values, so the bfloat16 export loses nothing.
  np.testing.assert_allclose(torch_logits(reloaded, tokens), ours, atol=1e-5, rtol=0)


def test_generation_config_built_from_end_ids(tmp_path):
  """Without a source generation_config.json the export names the config's and the
  tokenizer's end ids; the parameters' float32 stays float32 by default."""
  cfg = DecoderConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=8, architecture="qwen3",
                      bos_token_id=1, eos_token_id=(2, 6))
  model = params.init_on_mesh(cfg, _mesh(), seed=1)
  out = str(tmp_path / "out")
  hf_checkpoint.export_hf(model, out, tokenizer=_word_tokenizer(eos_token="w3", pad_token="w9"))
  assert _read(out, "generation_config.json") == {
      "bos_token_id": 1, "eos_token_id": [2, 3, 6], "pad_token_id": 9}
  config = _read(out, "config.json")
  assert (config["torch_dtype"], config["pad_token_id"]) == ("float32", 9)
  assert hf_checkpoint.export_dtype(cfg, "auto") == "float32"
  with pytest.raises(ValueError, match="export dtype 'fp8'"):
    hf_checkpoint.export_dtype(cfg, "fp8")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.generation_config.eos_token_id == [2, 3, 6]
  tokens = np.arange(10)[None]
  ours = np.asarray(model(jnp.asarray(tokens))[0])
  np.testing.assert_allclose(torch_logits(reloaded, tokens), ours, atol=1e-5, rtol=0)


def test_export_bfloat16_and_tokenizer(tmp_path):
  src = str(tmp_path / "src")
  ref = tiny_hf_model("llama", tied=True, out_dir=src)
  tokenizer = _word_tokenizer()
  model, _ = hf_checkpoint.load_hf(src, _mesh())
  out = str(tmp_path / "out")
  hf_checkpoint.export_hf(model, out, tokenizer=tokenizer, dtype="bfloat16")
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  assert safetensors_io.SafetensorsFile(os.path.join(out, "model.safetensors")).get(
      "model.embed_tokens.weight").dtype.name == "bfloat16"
  reloaded_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert reloaded_tok("w5 w7")["input_ids"] == [5, 7]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="float32")
  tokens = np.arange(8)[None]
  assert np.abs(torch_logits(reloaded, tokens) - torch_logits(ref, tokens)).max() < 0.05


def test_sharded_load_reads_only_device_slices(tmp_path):
  src = str(tmp_path / "src")
  tiny_hf_model("qwen2", tied=False, out_dir=src, heads=8, kv_heads=4, hidden=64)
  mesh = _mesh(8, fsdp=2, tensor=4)
  model, _ = hf_checkpoint.load_hf(src, mesh)
  q = model.layers[0].q_proj[...]
  assert q.addressable_shards[0].data.shape == (64 // 2, 64 // 4)


def test_missing_shard_is_named(tmp_path):
  src = str(tmp_path / "src")
  tiny_hf_model("llama", tied=False, out_dir=src)
  model, _ = hf_checkpoint.load_hf(src, _mesh())
  out = str(tmp_path / "out")
  hf_checkpoint.export_hf(model, out, max_shard_bytes=40_000)
  victim = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[1]
  os.remove(os.path.join(out, victim))
  with pytest.raises(hf_checkpoint.CheckpointError, match=victim):
    hf_checkpoint.load_hf(out, _mesh())


def test_shape_mismatch_is_named(tmp_path):
  src = str(tmp_path / "src")
  tiny_hf_model("llama", tied=False, out_dir=src)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  config["intermediate_size"] += 8
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(hf_checkpoint.CheckpointError, match="gate_proj.*mismatch"):
    hf_checkpoint.load_hf(src, _mesh())


def test_missing_tensor_is_named(tmp_path):
  src = str(tmp_path / "src")
  tiny_hf_model("llama", tied=False, out_dir=src)
  path = os.path.join(src, "model.safetensors")
  f = safetensors_io.SafetensorsFile(path)
  tensors = {k: np.array(f.get(k)) for k in f.keys() if k != "lm_head.weight"}
  del f
  safetensors_io.save_file(tensors, path)
  with pytest.raises(hf_checkpoint.CheckpointError, match="lm_head.weight is missing"):
    hf_checkpoint.load_hf(src, _mesh())


def test_unsupported_architecture_is_named(tmp_path):
  src = str(tmp_path / "src")
  tiny_hf_model("llama", tied=False, out_dir=src)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  config["architectures"], config["model_type"] = ["Gemma3ForCausalLM"], "gemma3_text"
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="unsupported architecture.*Gemma3"):
    hf_checkpoint.load_hf(src, _mesh())


def test_not_a_directory_and_no_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf_checkpoint.load_hf(str(tmp_path / "nope"), _mesh())
  src = str(tmp_path / "src")
  tiny_hf_model("llama", tied=False, out_dir=src)
  for f in os.listdir(src):
    if f.endswith(".safetensors"):
      os.remove(os.path.join(src, f))
  with pytest.raises(hf_checkpoint.CheckpointError, match="no \\*.safetensors"):
    hf_checkpoint.load_hf(src, _mesh())


def test_corrupt_safetensors_header(tmp_path):
  path = str(tmp_path / "bad.safetensors")
  with open(path, "wb") as f:
    f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
  with pytest.raises(ValueError, match="not a safetensors file"):
    safetensors_io.SafetensorsFile(path)
