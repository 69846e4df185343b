"""Configs, their validation, and main.py's command line."""

import os
import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (the CLI path under test)

from configs import rag_r1
from rag_r1_jax import config_validation
from rag_r1_jax.models import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("variant", ["mq", "sq", "smoke"])
def test_variants_validate(variant):
  config = rag_r1.get_config(variant)
  config_validation.validate(config)
  assert config.rollout.mode == ("sq" if variant == "sq" else "mq")


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant 'xl'"):
    rag_r1.get_config("xl")


def test_validation_names_every_bad_field():
  config = rag_r1.get_config("mq")
  config.rl.algorithm = "a2c"
  config.model.num_kv_heads = 3
  config.sampling.top_p = 1.5
  config.rollout.cache_block_size = -1
  config.model.attention_block = -1
  config.sft.max_length, config.sft.pack_length = 512, 256
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(config)
  message = str(e.value)
  assert "config.rl.algorithm='a2c': must be one of grpo, ppo" in message
  assert "config.model.num_heads=4: must be a multiple of config.model.num_kv_heads=3" in message
  assert "config.sampling.top_p=1.5" in message
  assert "config.rollout.cache_block_size=-1" in message
  assert "config.model.attention_block=-1: must be >= 0" in message
  assert "config.sft.pack_length=256: must be 0 (no packing) or at least" in message


def test_attention_block_reaches_the_decoder_config():
  model = rag_r1.get_config("mq").model
  model.vocab_size, model.attention_block = 100, 64
  assert config_lib.from_model_config(model).attention_block == 64
  assert rag_r1.get_config("mq").model.attention_block == 512  # the default (configs/common.py)
  with pytest.raises(ValueError, match="attention_block must be >= 0, got -1"):
    config_lib.from_model_config(model).replace(attention_block=-1)


def _validates_or_names(config, problem: str | None) -> None:
  """Validation passes when `problem` is None, else fails with a message starting `problem`."""
  if problem is None:
    config_validation.validate(config)
    return
  with pytest.raises(config_validation.ConfigError, match=problem.replace(".", r"\.")):
    config_validation.validate(config)


@pytest.mark.parametrize("algorithm, oversample, problem", [
    ("grpo", 0.5, "config.rl.oversample=0.5: must be >= 1"),
    ("ppo", 1.5, "config.rl.oversample=1.5: chooses groups by their reward spread"),
    ("grpo", 1.5, None), ("ppo", 1.0, None)])
def test_oversample_needs_grpo_and_at_least_one(algorithm, oversample, problem):
  config = rag_r1.get_config("mq")
  config.rl.algorithm, config.rl.oversample = algorithm, oversample
  _validates_or_names(config, problem)


def test_hf_source_needs_path_and_server_needs_url():
  config = rag_r1.get_config("mq")
  config.model.source = "hf"
  config.retrieval.backend = "server"
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(config)
  assert "config.model.path" in str(e.value) and "config.retrieval.server_url" in str(e.value)


def test_main_bad_override_type_names_flag():
  result = _main("--config=configs/rag_r1.py:smoke", "--config.model.num_layers=two")
  assert result.returncode != 0
  assert "--config.model.num_layers" in result.stderr


def test_main_unknown_field_is_one_line_naming_it():
  result = _main("--config=configs/rag_r1.py:smoke", "--config.model.num_layerz=2")
  assert result.returncode == 2
  assert result.stderr == (
      "main.py: --config.model.num_layerz=2: config.model has no field 'num_layerz'; did you "
      "mean 'num_layers'? (every field is declared in configs/common.py)\n")
  result = _main("--config=configs/rag_r1.py:smoke", "--config.sft.epochs=1",
                 "--config.nosuch.depth", "3")
  assert result.returncode == 2
  assert result.stderr == ("main.py: --config.nosuch.depth: config has no field 'nosuch' "
                           "(every field is declared in configs/common.py)\n")


def test_main_invalid_value_exits_2_naming_field():
  result = _main("--config=configs/rag_r1.py:smoke", "--config.rl.algorithm=a2c")
  assert result.returncode == 2
  assert "config.rl.algorithm='a2c'" in result.stderr


def test_main_prints_config_and_mesh(tmp_path):
  result = _main("--config=configs/rag_r1.py:smoke", "--config.model.num_layers=3",
                 "--config.stages=eval", f"--workdir={tmp_path}")
  assert "num_layers: 3" in result.stdout
  assert "Mesh(data=1, fsdp=1, tensor=1)" in result.stdout
