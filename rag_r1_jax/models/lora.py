"""LoRA adapters on the decoder's attention and MLP projections.

A targeted projection `y = x W` (W [in, out]) becomes `y = x W + (alpha / r) (x A) B` with
A [in, r] and B [r, out]. B starts at zero, so a fresh adapter leaves the model unchanged;
A starts uniform in +-1/sqrt(in) (PEFT's kaiming-uniform default). Adapters are `LoraParam`s,
an `nnx.Param` subclass: with `model.lora_rank` > 0 the train state trains them alone and
keeps every other weight frozen (training/train_state.py), and `fold` merges them into the base
weights for the sampler and the Hugging Face export. A scanned model stacks them along the
leading `layers` axis like its other layer weights.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rag_r1_jax.models import ops

# config.model.lora_targets' names -> the projection each one adapts.
TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
           "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


class LoraParam(nnx.Param):
  """One LoRA factor: A [in, r] or B [r, out] of a projection ([layers, ...] when stacked)."""


def a_name(projection: str) -> str:
  return f"{projection}_lora_a"


def b_name(projection: str) -> str:
  return f"{projection}_lora_b"


def parse_targets(value: str) -> tuple[str, ...]:
  """config.model.lora_targets ("q,k,v,o,gate,up,down") as a tuple of TARGETS keys."""
  return tuple(s.strip() for s in str(value).split(",") if s.strip())


def init_bound(fan_in: int) -> float:
  """A's initial values are uniform in +-init_bound(in)."""
  return 1.0 / float(np.sqrt(fan_in))


def initial_value(path: str, shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
  """A fresh adapter factor as a host array (adapters added to a loaded checkpoint): B zeros,
  A uniform from a generator seeded by `seed` and the factor's path (the same in every process).

  path: the factor's path in the model state ("layers/3/q_proj_lora_a"); shape: [in, r] or
  [layers, in, r].
  """
  if path.endswith("_lora_b"):
    return np.zeros(shape, dtype)
  assert path.endswith("_lora_a"), path
  rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
  bound = init_bound(shape[-2])
  return rng.uniform(-bound, bound, shape).astype(dtype)


def delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """The adapter's output scale * (x A) B: x [..., in], a [in, r], b [r, out] -> [..., out]."""
  return ops.matmul(ops.matmul(x, a.astype(x.dtype)), b.astype(x.dtype)) * jnp.asarray(
      scale, x.dtype)


def fold(weights: dict[str, jax.Array], scale: float) -> dict[str, jax.Array]:
  """Layer weights {name: array} with every adapter merged into its projection
  (W + scale A B, in float32, cast back to W's dtype) and the adapter entries removed.
  Works on one layer's weights and on stacked [layers, ...] ones alike."""
  out = {k: v for k, v in weights.items() if not k.endswith(("_lora_a", "_lora_b"))}
  for proj in TARGETS.values():
    if a_name(proj) not in weights:
      continue
    a = weights[a_name(proj)].astype(jnp.float32)
    b = weights[b_name(proj)].astype(jnp.float32)
    w = out[proj]
    out[proj] = (w.astype(jnp.float32) + scale * jnp.einsum("...ir,...ro->...io", a, b)
                 ).astype(w.dtype)
  return out
