"""HF checkpoint round trips and the errors a user can cause with a bad directory."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import hf_checkpoint, safetensors_io
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


def test_export_bfloat16_and_tokenizer(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  src = str(tmp_path / "src")
  ref = tiny_hf_model("llama", tied=True, out_dir=src)
  vocab = {f"w{i}": i for i in range(97)}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0")
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
