"""Parameters and caches are sharded as the logical rules say, and results do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from rag_r1_jax import sharding
from rag_r1_jax.models import kv_cache, params
from rag_r1_jax.models.config import DecoderConfig

CFG = DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=16, num_kv_heads=8, head_dim=8, qkv_bias=True, architecture="qwen2")


def _mesh(data, fsdp, tensor):
  return sharding.make_mesh(ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}))


def _expected_spec(mesh, axes):
  rules = {"embed": "fsdp", "vocab": "tensor", "q_heads": "tensor", "kv_heads": "tensor",
           "mlp": "tensor"}
  out = []
  for a in axes:
    axis = rules.get(a)
    out.append(axis if axis and mesh.shape[axis] > 1 else None)
  return P(*out)


def _flat_params(model):
  return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def test_eight_fake_devices_present():
  assert jax.device_count() == 8


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
@pytest.mark.parametrize("scan", [False, True])
def test_params_sharded_by_rules_and_forward_unchanged(shape, scan):
  cfg = CFG.replace(scan_layers=scan)
  one_device = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  single = params.init_on_mesh(cfg, one_device, seed=7)
  mesh = _mesh(*shape)
  model = params.init_on_mesh(cfg, mesh, seed=7)
  for path, var in _flat_params(model).items():
    axes = var.get_metadata()["logical_axes"]
    array = var[...]
    expected = jax.sharding.NamedSharding(mesh, _expected_spec(mesh, axes))
    assert array.sharding.is_equivalent_to(expected, array.ndim), (path, array.sharding)
    expected_shard = tuple(d // (mesh.shape[s] if s else 1)
                           for d, s in zip(array.shape, _expected_spec(mesh, axes)))
    assert array.addressable_shards[0].data.shape == expected_shard
    np.testing.assert_array_equal(np.asarray(array), np.asarray(_flat_params(single)[path][...]))

  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 12)), jnp.int32)
  batch_sharding = sharding.named_sharding(mesh, ("batch", "seq"), tokens.shape)
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens):
    logits, _ = nnx.merge(graphdef, state)(tokens)
    return logits

  with jax.set_mesh(mesh):
    sharded = forward(state, jax.device_put(tokens, batch_sharding))
  reference, _ = single(tokens)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(reference), atol=2e-5, rtol=0)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_cache_sharded_by_rules_and_decode_unchanged(shape, scan):
  mesh = _mesh(*shape)
  model = params.init_on_mesh(CFG.replace(scan_layers=scan), mesh, seed=1)
  shardings = kv_cache.cache_shardings(mesh, CFG, batch_size=8, capacity=16, block_size=8)
  batch_axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
  batch_spec = batch_axes if len(batch_axes) > 1 else (batch_axes[0] if batch_axes else None)
  tensor_spec = "tensor" if mesh.shape["tensor"] > 1 else None
  for block in jax.tree.leaves(shardings.k):
    assert block.spec == P(batch_spec, tensor_spec, None, None)
  cache = jax.device_put(kv_cache.init_cache(CFG, 8, 16, block_size=8), shardings)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, tokens, lengths, cache):
    logits, cache = nnx.merge(graphdef, state)(tokens, cache=cache, chunk_lengths=lengths)
    return logits, jax.lax.with_sharding_constraint(cache, shardings)

  tokens = jnp.asarray(np.random.RandomState(2).randint(0, 128, (8, 5)), jnp.int32)
  lengths = jnp.asarray([5, 3, 1, 4, 5, 2, 5, 1], jnp.int32)
  with jax.set_mesh(mesh):
    logits, new_cache = step(state, tokens, lengths, cache)
  for block, want in zip(jax.tree.leaves((new_cache.k, new_cache.v)),
                         jax.tree.leaves((shardings.k, shardings.v))):
    assert block.sharding.is_equivalent_to(want, 4)
  np.testing.assert_array_equal(np.asarray(new_cache.lengths), np.asarray(lengths))
  full, _ = model(tokens)
  for r, n in enumerate(np.asarray(lengths)):
    np.testing.assert_allclose(np.asarray(logits[r, :n]), np.asarray(full[r, :n]), atol=2e-5)


def test_indivisible_dimension_is_replicated():
  mesh = _mesh(1, 1, 8)
  spec = sharding.partition_spec(("embed", "kv_heads"), (64, 3 * 8), mesh)
  assert spec == P(None, "tensor")
  spec = sharding.partition_spec(("embed", "kv_heads"), (64, 12), mesh)
  assert spec == P(None, None)


def test_mesh_shape_resolution_and_errors():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
