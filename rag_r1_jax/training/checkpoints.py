"""Checkpoints: a thin wrapper over orbax-checkpoint's CheckpointManager (0.12.x API).

One checkpoint per step in `<directory>/<step>/`, with two items:
  state: a pytree of arrays (params, optimizer state, reference / critic params, PRNG keys),
         written with StandardSave (tensorstore / OCDBT, sharded arrays written in parallel);
  meta:  a JSON dict (step, data-iterator position, config dict, metrics).
Saves are asynchronous: `save` returns once the arrays are copied off the device and the
writing continues in a background thread. Orbax writes into `<step>.orbax-checkpoint-tmp`
and renames it to `<step>` only when every item is written, so a run killed mid-save leaves
a tmp directory that is never listed and is removed when the next manager starts; restoring
"the latest" always picks a complete checkpoint.

Typed PRNG keys (`jax.random.key`) are saved as their raw key data and rebuilt on restore
from the key dtype in the target; legacy uint32 keys are plain arrays.
"""

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
_STATE, _META = "state", "meta"


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: PyTree) -> PyTree:
  """Typed PRNG key leaves replaced by their uint32 key data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_key_data(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """The abstract uint32 key-data array that stores a typed-key leaf, on a matching sharding."""
  data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    extra = (None,) * (len(data.shape) - len(leaf.shape))
    sharding = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec(*sharding.spec, *extra))
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def _abstract(leaf: Any) -> Any:
  """A restore target leaf: concrete arrays become ShapeDtypeStructs keeping their sharding."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if isinstance(leaf, np.ndarray):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
  return leaf


def _jsonable(meta: dict) -> dict:
  """meta with numpy / JAX scalars and arrays turned into Python values; fails on other types."""

  def convert(x):
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
      return np.asarray(x).tolist()
    raise TypeError(f"checkpoint metadata value {x!r} of type {type(x).__name__} is not JSON")

  return json.loads(json.dumps(meta, default=convert))


class CheckpointManager:
  """Saves and restores (state pytree, JSON metadata) per step; keeps the newest `keep`."""

  def __init__(self, directory: str, keep: Optional[int] = 3, async_save: bool = True):
    """directory: created if missing; keep: checkpoint.keep (None or 0: keep all)."""
    if keep is not None and keep < 0:
      raise ValueError(f"checkpoint.keep={keep} must be >= 0")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(_STATE, _META))

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    """Starts saving `state` and `meta` as checkpoint `step` (returns before the write ends).

    Do not modify `state` in place (e.g. donate it to a jitted step) before
    wait_until_finished when arrays are NumPy; jax.Arrays are immutable and safe.
    """
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(_keys_to_data(state)),
        _META: ocp.args.JsonSave(_jsonable(meta)),
    })
    self._manager.save(step, args=args, force=True)

  def all_steps(self) -> list[int]:
    """Checkpoint steps, ascending: complete ones on disk plus saves in flight in this process.

    A save that a previous process did not finish is never listed.
    """
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest step of all_steps(), or None when there is none."""
    return self._manager.latest_step()

  def _resolve(self, step: Optional[int]) -> int:
    """The step to restore, after any save in flight has finished."""
    self._manager.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise FileNotFoundError(
          f"no complete checkpoint for step {step} in {self.directory}; "
          f"complete steps: {self.all_steps()}")
    return step

  def restore(self, target: PyTree, step: Optional[int] = None) -> tuple[PyTree, dict]:
    """(state, meta) of checkpoint `step` (default: the latest complete one).

    target: the state's structure, with jax.ShapeDtypeStruct leaves (e.g. from
    jax.eval_shape) or arrays; each leaf is restored with its dtype onto its sharding, so a
    checkpoint can be restored onto a different mesh. Typed PRNG key leaves are rebuilt.
    """
    step = self._resolve(step)
    abstract = jax.tree.map(_abstract, target)
    stored = jax.tree.map(lambda x: _abstract_key_data(x) if _is_key(x) else x, abstract)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(stored),
        _META: ocp.args.JsonRestore(),
    }))

    def rebuild(want, got):
      if _is_key(want):
        impl = want.dtype._impl  # pylint: disable=protected-access  # no public dtype->impl
        return jax.random.wrap_key_data(got, impl=impl)
      return got

    state = jax.tree.map(rebuild, abstract, restored[_STATE])
    return state, restored[_META]

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """Only the JSON metadata of checkpoint `step` (default: the latest complete one)."""
    step = self._resolve(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        **{_META: ocp.args.JsonRestore()}))[_META]

  def wait_until_finished(self) -> None:
    """Blocks until every pending save is written and finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
