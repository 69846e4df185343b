"""The dry run compiles a config's steps with abstract weights on 8 fake devices and sizes them."""

import jax
import pytest

from configs import rag_r1, rag_r1_qwen2_5_7b
from rag_r1_jax import config_validation, dry_run, sharding

GIB = dry_run.GIB


def _small_config():
  config = rag_r1.get_config("smoke")
  config.model.vocab_size = 512
  config.mesh.data, config.mesh.fsdp = 1, -1
  config.rl.micro_batch_size_per_device = 1
  config.rollout.rows_in_flight = 8
  return config


@pytest.fixture(scope="module")
def parts():
  config = _small_config()
  mesh = sharding.make_mesh(config.mesh)
  return config, mesh, dry_run.run(config, mesh, ("sft", "rl"), log=lambda _: None)


def test_every_part_is_compiled_and_sized(parts):
  config, mesh, compiled = parts
  assert [p.name for p in compiled] == ["sft step", "rl scoring", "rl update", "rl optimizer step",
                                       "rollout decode"]
  cfg, source = dry_run.model_config(config)
  assert source == "the shape fields of config.model"
  state = dry_run.rl_state(config, cfg, mesh)
  # The RL state (policy, two Adam moments, reference) split 8 ways stays resident in rollouts,
  # or only the policy with rl.offload_during_rollout.
  assert compiled[-1].resident == dry_run.per_device_bytes(state)
  config.rl.offload_during_rollout = True
  assert dry_run.rollout_resident(config, cfg, mesh) == dry_run.per_device_bytes(state.params)
  config.rl.offload_during_rollout = False
  params = sum(x.size for x in jax.tree.leaves(state.params))
  assert dry_run.per_device_bytes(state) <= 1.1 * (4 * params * 4) / 8  # norms replicated
  for p in compiled:
    assert p.peak == p.arguments + p.outputs - p.aliased + p.temporaries + p.resident
    assert 0 < p.peak < 0.5 * GIB


def test_verdicts_name_the_part_and_the_excess(parts, capsys):
  config, mesh, compiled = parts
  assert "fits" in dry_run.verdict(compiled[0], 1.0)
  limit = compiled[0].peak / GIB / 2
  over = (compiled[0].peak - limit * GIB) / GIB
  assert dry_run.verdict(compiled[0], limit) == (
      f"DOES NOT FIT: {over:.2f} GiB over {limit:g} GiB")
  table = dry_run.table(compiled, 1.0)
  assert table.count("\n") == len(compiled) + 1 and "rollout decode" in table


def test_main_exit_status_and_message(capsys):
  config = _small_config()
  config.stages = "sft"
  mesh = sharding.make_mesh(config.mesh)
  assert dry_run.main(config, mesh, 1e-4) == 1
  out = capsys.readouterr().out
  assert "dry run: sft step does not fit: it needs" in out and "more than 0.0001" in out
  assert dry_run.main(config, mesh, 1.0) == 0
  assert "every part fits in 1 GiB per device" in capsys.readouterr().out


def test_mesh_that_does_not_split_the_batch_names_the_field():
  config = rag_r1_qwen2_5_7b.get_config("mq")
  config.sft.batch_size = 36
  config.rl.micro_batch_size_per_device = 3
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_mesh(config, {"data": 1, "fsdp": 8, "tensor": 1})
  assert "config.sft.batch_size = 36 rows: not divisible by the mesh's data x fsdp = 8" in str(e.value)
  assert "config.rl.micro_batch_size_per_device=3: 3 x 8 (data x fsdp) rows" in str(e.value)
  config_validation.validate_mesh(rag_r1_qwen2_5_7b.get_config("mq"),
                                  {"data": 1, "fsdp": 64, "tensor": 1})


def test_tensor_axis_that_does_not_split_the_heads_names_them():
  cfg, _ = dry_run.model_config(rag_r1_qwen2_5_7b.get_config("mq"))
  config_validation.validate_model_mesh(cfg, {"data": 1, "fsdp": 2, "tensor": 4})
  with pytest.raises(config_validation.ConfigError, match="model num_heads=28 is not divisible "
                     "by config.mesh.tensor=8"):
    config_validation.validate_model_mesh(cfg, {"data": 1, "fsdp": 1, "tensor": 8})
