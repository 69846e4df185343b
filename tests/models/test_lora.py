"""LoRA adapters: zero B is the base model, merging equals adapting, shardings, HF load / export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from ml_collections import ConfigDict

from configs import common
from rag_r1_jax import config_validation, sharding
from rag_r1_jax.models import config as config_lib
from rag_r1_jax.models import factory, hf_checkpoint, kv_cache, lora, params
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.models.decoder import Decoder
from tests.models.hf_fixtures import tiny_hf_model, torch_logits

BASE = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)
ALL = tuple(lora.TARGETS)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)


def _mesh(data=1, fsdp=1, tensor=1):
  return sharding.make_mesh(ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}),
                            jax.devices()[:data * fsdp * tensor])


def _adapted(cfg: DecoderConfig, rank=4, alpha=8.0, targets=ALL) -> DecoderConfig:
  return cfg.replace(lora_rank=rank, lora_alpha=alpha, lora_targets=targets)


def _randomise_b(model: Decoder, seed: int = 1, std: float = 0.2) -> None:
  """Every adapter's B drawn at random (a trained adapter), in place."""
  for i, (path, variable) in enumerate(nnx.to_flat_state(nnx.state(model, lora.LoraParam))):
    if path[-1].endswith("_lora_b"):
      shape = variable.get_value().shape
      value = jax.random.normal(jax.random.key(seed + i), shape) * std
      variable.set_value(jax.device_put(value, variable.get_value().sharding))


def _logits(model, tokens=TOKENS):
  return np.asarray(model(tokens)[0])


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full"), (True, "dots")])
def test_zero_b_is_the_base_model_forward_and_backward(scan, remat):
  cfg = BASE.replace(scan_layers=scan, remat=remat)
  base = Decoder(cfg, rngs=nnx.Rngs(3))
  adapted = Decoder(_adapted(cfg), rngs=nnx.Rngs(3))
  # The same seed gives the same base weights: adapters are drawn after them.
  same = jax.tree.map(np.array_equal, nnx.state(base), nnx.state(adapted, nnx.Not(lora.LoraParam)))
  assert all(jax.tree.leaves(same))
  np.testing.assert_array_equal(_logits(adapted), _logits(base))

  def loss(model):
    return jnp.mean(model(TOKENS)[0] ** 2)

  g_base = nnx.grad(loss)(base)
  g_adapted = nnx.grad(loss, argnums=nnx.DiffState(0, lora.LoraParam))(adapted)
  # With B = 0, A gets no gradient and B gets A^T x^T dY, non-zero.
  flat = dict(nnx.to_flat_state(g_adapted))
  a_grads = [np.abs(np.asarray(v[...])).max() for p, v in flat.items() if p[-1].endswith("_a")]
  b_grads = [np.abs(np.asarray(v[...])).max() for p, v in flat.items() if p[-1].endswith("_b")]
  assert max(a_grads) == 0 and min(b_grads) > 0
  assert len(a_grads) == len(b_grads) == len(ALL) * (1 if scan else cfg.num_layers)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g_base))


@pytest.mark.parametrize("scan,targets", [(False, ALL), (True, ("q", "v")),
                                          (False, ("o", "down"))])
def test_merged_model_equals_adapted_model(scan, targets):
  cfg = _adapted(BASE.replace(scan_layers=scan), targets=targets)
  adapted = Decoder(cfg, rngs=nnx.Rngs(0))
  base = Decoder(cfg.without_adapters(), rngs=nnx.Rngs(0))
  _randomise_b(adapted)
  merged = params.merge_adapters(adapted)
  assert merged.cfg.lora_rank == 0 and not nnx.state(merged, lora.LoraParam)
  got, want = _logits(merged), _logits(adapted)
  assert np.abs(want - _logits(base)).max() > 1e-2  # the adapters do change the model
  np.testing.assert_allclose(got, want, atol=2e-5)
  # Only the targeted projections changed; the rest are the same arrays, not copies.
  flat_m, flat_b = dict(nnx.to_flat_state(nnx.state(merged))), dict(nnx.to_flat_state(
      nnx.state(base)))
  targeted = {lora.TARGETS[t] for t in targets}
  for path, variable in flat_m.items():
    changed = not np.array_equal(variable[...], flat_b[path][...])
    assert changed == (path[-1] in targeted), path
  # The merged model decodes with a KV cache like the adapted one scores without.
  cache = kv_cache.init_cache(merged.cfg, 2, 16, block_size=8)
  cached, _ = merged(TOKENS, cache=cache)
  np.testing.assert_allclose(np.asarray(cached), want, atol=2e-5)


def test_adapters_are_sharded_like_their_projection_axes():
  cfg = _adapted(BASE.replace(scan_layers=True))
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  model = params.init_on_mesh(cfg, mesh)
  flat = dict(nnx.to_flat_state(nnx.state(model)))

  def spec(name):  # the PartitionSpec with its trailing Nones
    x = flat[("layers", name)][...]
    return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))

  for proj in lora.TARGETS.values():
    base = spec(proj)
    assert spec(lora.a_name(proj)) == (base[0], base[1], None), proj
    assert spec(lora.b_name(proj)) == (base[0], None, base[2]), proj
  # The weights are split (fsdp on the input or output axis, tensor on the heads / MLP axis).
  assert spec("q_proj_lora_b")[2] == "tensor" and spec("down_proj_lora_a")[1] == "tensor"
  # The same values as on one device.
  one = params.init_on_mesh(cfg, _mesh())
  np.testing.assert_allclose(_logits(model), _logits(one), atol=1e-5)


def test_loaded_checkpoint_gets_fresh_adapters_and_merged_export_has_adapted_logits(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  tiny_hf_model("llama", tied=True, out_dir=src)
  mesh = _mesh(fsdp=2)
  base, _ = hf_checkpoint.load_hf(src, mesh)
  adapted, cfg = hf_checkpoint.load_hf(src, mesh, lora_rank=2, lora_alpha=4.0,
                                       lora_targets=("q", "k", "v", "o", "gate", "up", "down"))
  assert cfg.lora_rank == 2 and cfg.lora_scale == 2.0
  tokens = np.random.RandomState(0).randint(0, 97, (2, 11))
  np.testing.assert_array_equal(_logits(adapted, jnp.asarray(tokens)),
                                _logits(base, jnp.asarray(tokens)))
  a = np.asarray(adapted.layers[1].q_proj_lora_a[...])
  assert np.abs(a).max() > 0 and not np.array_equal(a, adapted.layers[0].q_proj_lora_a[...])
  _randomise_b(adapted, std=0.5)
  want = _logits(adapted, jnp.asarray(tokens))
  assert np.abs(want - _logits(base, jnp.asarray(tokens))).max() > 1e-2
  hf_checkpoint.export_hf(adapted, out)
  reloaded, reloaded_cfg = hf_checkpoint.load_hf(out, _mesh())
  assert reloaded_cfg.lora_rank == 0
  np.testing.assert_allclose(_logits(reloaded, jnp.asarray(tokens)), want, atol=2e-5)
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(out)
  np.testing.assert_allclose(torch_logits(torch_model, tokens), want, atol=1e-4)


def test_bad_lora_settings_are_named():
  with pytest.raises(ValueError, match="lora_targets"):
    _adapted(BASE, targets=("q", "qkv"))
  with pytest.raises(ValueError, match="lora_targets"):
    _adapted(BASE, targets=())
  with pytest.raises(ValueError, match="lora_rank"):
    _adapted(BASE, rank=-1)
  _adapted(BASE, rank=0, targets=())  # off: no targets needed
  config = common.base_config()
  config.model.lora_targets = "q,x"
  config.model.lora_alpha = 0.0
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(config)
  assert "config.model.lora_targets='q,x'" in str(e.value)
  assert "config.model.lora_alpha=0.0" in str(e.value)


def test_config_fields_reach_the_decoder_config_and_a_loaded_checkpoint():
  model = common.base_config().model
  assert config_lib.from_model_config(model).lora_rank == 0  # off by default
  model.lora_rank, model.lora_alpha, model.lora_targets = 8, 32.0, "q, v,down"
  cfg = config_lib.from_model_config(model)
  assert (cfg.lora_rank, cfg.lora_scale, cfg.lora_targets) == (8, 4.0, ("q", "v", "down"))
  assert cfg.lora_projections == ("q_proj", "v_proj", "down_proj")
  overrides = factory.runtime_overrides(model)
  assert (overrides["lora_rank"], overrides["lora_targets"]) == (8, ("q", "v", "down"))
