"""Several JAX processes (hosts) running one pipeline over one global mesh.

The contract: every process runs the same host code on the same host values, with one
exception, the rollout. Data, tokenizer, prompts, rewards and updates are replicated: each
process builds every batch itself, deterministically. Host values go onto the global mesh with
`put` (each process fills only its own devices' slices) and come back with `fetch` (a
collective for arrays split over processes: every process must call it, in the same order).
During a rollout each process parses, and retrieves for, only the rows its devices decode
(`local_rows`, `fetch_local`, `put` of values filled only at those rows); the finished
trajectories are gathered once per rollout (`fetch`, `gather_objects`), so everything after
them is replicated again. Process 0 alone writes files (exports,
metrics, eval reports, the tokenizer); a process that later reads them first waits at
`barrier`. Orbax checkpoints are saved and restored by every process (orbax coordinates the
hosts itself). So the run directory must be one filesystem every process sees.

`initialize` joins the processes; it must run before anything touches a device.
"""

import json
import re
import zlib
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

PyTree = Any


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               auto: bool = False) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`); nothing when not asked for one.

  The arguments are main.py's flags of the same names. Without `auto`, a multi-process run
  gives all three of coordinator_address, num_processes and process_id; with `auto`, JAX
  detects what is not given from the cluster (Cloud TPU pod, SLURM, Open MPI, Kubernetes).
  Raises ValueError naming the flag on a bad combination or value.
  """
  flags = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  given = [name for name, value in flags.items() if value is not None]
  if not auto and not given:
    if local_device_ids:
      raise ValueError("--local_device_ids applies to a multi-process run: also give "
                       "--coordinator_address, --num_processes and --process_id")
    return
  missing = [name for name, value in flags.items() if value is None]
  if not auto and missing:
    raise ValueError(f"{missing[0]} is required with {', '.join(given)}: a multi-process run "
                     "gives --coordinator_address, --num_processes and --process_id (or "
                     "--auto_distributed on a cluster JAX detects)")
  if coordinator_address is not None and not re.fullmatch(r"\S+:\d+", coordinator_address):
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if process_id is not None and (process_id < 0 or
                                 (num_processes is not None and process_id >= num_processes)):
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes})")
  # CPU devices of several processes talk through gloo (unused by GPU and TPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             local_device_ids=list(local_device_ids) if local_device_ids else None)


def is_primary() -> bool:
  """Whether this is process 0, the one that writes files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put_leaf(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # already global: a reshard, allowed across processes
  if _is_key(x):  # typed PRNG keys travel as their key data (trailing dims replicated)
    data = _put_leaf(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put(tree: PyTree, shardings: PyTree | jax.sharding.Sharding) -> PyTree:
  """Host values (numpy, Python scalars, local jax arrays) as global arrays on `shardings`.

  Every process holds the whole value and fills its own devices' slices, so
  `jax.device_put`'s refusal to send a local value to other processes' devices never applies.
  shardings: one for every leaf, or a tree of them matching `tree`.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _put_leaf(x, shardings), tree)
  return jax.tree.map(_put_leaf, tree, shardings)


def _spans_processes(x: Any) -> bool:
  return isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)


def fetch(tree: PyTree) -> PyTree:
  """The tree's arrays as host values, gathered from every process where they are split.

  A collective when some array is split over processes: then every process must call it.
  """
  leaves, treedef = jax.tree.flatten(tree)
  split = [_spans_processes(x) for x in leaves]
  local = iter(jax.device_get([x for x, s in zip(leaves, split) if not s]))
  out = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) if s else next(local)
         for x, s in zip(leaves, split)]
  return jax.tree.unflatten(treedef, out)


def local_rows(x: jax.Array) -> np.ndarray:
  """The indices along axis 0 that this process's devices hold, sorted ([rows] int64)."""
  if x.is_fully_addressable:
    return np.arange(x.shape[0])
  rows = set()
  for shard in x.addressable_shards:
    rows.update(range(*shard.index[0].indices(x.shape[0])))
  return np.array(sorted(rows), np.int64)


def fetch_local(tree: PyTree) -> PyTree:
  """The tree's arrays as host values of their global shapes, filled only where this process's
  devices hold them (elsewhere zeros); no collective, so processes may call it independently."""
  def leaf(x):
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    out = np.zeros(x.shape, x.dtype)
    copied = set()
    for shard in x.addressable_shards:  # replicas (e.g. over the tensor axis) copied once
      key = tuple(s.indices(n) for s, n in zip(shard.index, x.shape))
      if key not in copied:
        copied.add(key)
        out[shard.index] = np.asarray(shard.data)
    return out
  return jax.tree.map(leaf, tree)


def _allgather(value: np.ndarray) -> np.ndarray:
  """[processes, ...]: every process's value (same shape and dtype everywhere)."""
  return np.asarray(multihost_utils.process_allgather(value))


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on some process (a collective in a multi-process run)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(_allgather(np.bool_(flag)).any())


def max_over_processes(value: int) -> int:
  """The largest of every process's `value` (a collective in a multi-process run)."""
  if jax.process_count() == 1:
    return int(value)
  return int(_allgather(np.int64(value)).max())


def gather_objects(value: Any) -> list[Any]:
  """Every process's JSON-serialisable `value`, in process order (a collective)."""
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = _allgather(np.int64(data.size))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everyone = _allgather(padded)
  return [json.loads(everyone[p, :sizes[p]].tobytes()) for p in range(len(sizes))]


def check_same(arrays: dict[str, np.ndarray], what: str) -> None:
  """Raises ValueError when a host value differs between processes (the contract above)."""
  if jax.process_count() == 1:
    return
  digest = 0
  for name in sorted(arrays):
    value = np.ascontiguousarray(arrays[name])
    digest = zlib.crc32(value.tobytes(), zlib.crc32(name.encode(), digest))
  digests = multihost_utils.process_allgather(np.uint32(digest))
  if len(set(digests.tolist())) > 1:
    raise ValueError(f"{what} differs between processes")
