"""Device meshes and logical-axis sharding rules.

Arrays are annotated with logical axis names (`("layers", "embed", "mlp")`); rules map each
name to mesh axes. A mesh axis that does not divide an array dimension is dropped for that
array (the dimension is replicated instead), so any model runs on any device count.
"""

import contextlib
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). Weights are split over fsdp (ZeRO-3 style) and
# tensor (Megatron style); activations ("act_*") over data and fsdp by row, as FSDP means (each
# device computes its own rows and gathers one layer's weights at a time), and over tensor by
# head, MLP unit and vocabulary entry. The residual stream is replicated over tensor.
DEFAULT_RULES: Mapping[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "layers": None,
    "norm": None,
    "head_dim": None,
    "cache_seq": None,
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    # Rows and units of the MLP and the output projection (the same as above when training).
    "act_mlp_batch": ("data", "fsdp"),
    "act_mlp_vocab": ("tensor",),
}

# The sampler's layout. Weights are never split over fsdp by their input dimension, so a
# decode step gathers no weights: attention weights are split over tensor only (fsdp devices
# decode their own rows, each with its rows' cache), while the MLP and the vocabulary, 90% of
# a 7B model's weights, are split over tensor x fsdp. A decode step's activations are one
# token per row, so for those layers the rows are gathered over fsdp instead (a few MB), the
# products computed on each device's slice of units, and the logits returned to their rows
# split over fsdp (an all-to-all of each device's slice, never a full-batch all-reduce).
# `Sampler` re-shards the trainer's parameters into this layout once per weight update;
# its prefill keeps DEFAULT_RULES' activations (rows over fsdp, weights gathered per layer,
# as a long chunk's compute outweighs one layer's gather).
DECODE_RULES: Mapping[str, tuple[str, ...] | None] = {
    **DEFAULT_RULES, "embed": None, "mlp": ("tensor", "fsdp"), "vocab": ("tensor", "fsdp"),
    "act_mlp_batch": ("data",), "act_mlp": ("tensor", "fsdp"), "act_mlp_vocab": ("tensor", "fsdp"),
}

_active_rules: list[Mapping[str, tuple[str, ...] | None]] = [DEFAULT_RULES]


@contextlib.contextmanager
def activation_rules(rules: Mapping[str, tuple[str, ...] | None]):
  """Within the block, `constrain` (at trace time) maps logical axes with `rules`."""
  _active_rules.append(rules)
  try:
    yield
  finally:
    _active_rules.pop()


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves `mesh.{data,fsdp,tensor}` (one may be -1) against the device count."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  bad = [a for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise ValueError(f"config.mesh.{bad[0]} must be a positive size or -1, got {mesh_config[bad[0]]}")
  if len(free) > 1:
    raise ValueError("config.mesh: at most one of data/fsdp/tensor may be -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all) with Auto axis types."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def partition_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Mapping[str, tuple[str, ...] | None] = DEFAULT_RULES) -> PartitionSpec:
  """The PartitionSpec for an array of `shape` with `logical_axes` under `rules`."""
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    if name is not None and name not in rules:
      raise KeyError(f"no sharding rule for logical axis {name!r}")
    mesh_axes = []
    for axis in (rules.get(name) or ()) if name is not None else ():
      size = mesh.shape[axis]
      if axis in used or size == 1:
        continue
      if dim % (size * math.prod(mesh.shape[a] for a in mesh_axes)) == 0:
        mesh_axes.append(axis)
    used.update(mesh_axes)
    spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int],
                   rules: Mapping[str, tuple[str, ...] | None] = DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, partition_spec(logical_axes, shape, mesh, rules))


def batch_shards(mesh) -> int:
  """How many ways the rows of a batch are split (the mesh's data x fsdp)."""
  return int(mesh.shape["data"]) * int(mesh.shape["fsdp"])


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`x` constrained to its logical axes on the mesh set by `jax.set_mesh` (none set: x).

  Used on activations inside jitted code, with the rules of the innermost `activation_rules`
  block (default DEFAULT_RULES); a mesh axis that does not divide a dimension is dropped for
  it, as for weights.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  spec = partition_spec(logical_axes, x.shape, mesh, _active_rules[-1])
  return jax.lax.with_sharding_constraint(x, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def put_on_mesh(array: np.ndarray, mesh: Mesh, logical_axes: Sequence[str | None]) -> jax.Array:
  """Places a host array on the mesh, each device reading only its own slice."""
  sharding = named_sharding(mesh, logical_axes, array.shape)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def put_rows(arrays: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host arrays [rows, ...] placed on the mesh, split over the batch axes ("data", "fsdp")."""
  return {name: put_on_mesh(x, mesh, ("batch",) + (None,) * (x.ndim - 1))
          for name, x in arrays.items()}


def describe(mesh: Mesh) -> str:
  axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  return f"Mesh({axes}) over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
