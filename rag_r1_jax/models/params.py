"""Parameter placement: shardings from logical axes, initialisation on a mesh, HF name maps,
LoRA adapters merged into the weights they adapt."""

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rag_r1_jax import sharding
from rag_r1_jax.models import lora
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.models.decoder import Decoder

# our layer weight name -> (HF suffix under model.layers.{i}., transpose to [in, out])
_LAYER_WEIGHTS = {
    "attn_norm": ("input_layernorm.weight", False),
    "q_proj": ("self_attn.q_proj.weight", True),
    "k_proj": ("self_attn.k_proj.weight", True),
    "v_proj": ("self_attn.v_proj.weight", True),
    "q_bias": ("self_attn.q_proj.bias", False),
    "k_bias": ("self_attn.k_proj.bias", False),
    "v_bias": ("self_attn.v_proj.bias", False),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "o_proj": ("self_attn.o_proj.weight", True),
    "o_bias": ("self_attn.o_proj.bias", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "gate_proj": ("mlp.gate_proj.weight", True),
    "up_proj": ("mlp.up_proj.weight", True),
    "down_proj": ("mlp.down_proj.weight", True),
}


@dataclasses.dataclass(frozen=True)
class ParamSource:
  """Where one of our parameters comes from in a HF checkpoint.

  hf_names has one name per layer for stacked (scanned) weights, else a single name.
  """
  path: tuple  # path in nnx.state(model)
  hf_names: tuple[str, ...]
  transpose: bool
  stacked: bool


def param_sources(cfg: DecoderConfig) -> Iterator[ParamSource]:
  """Every parameter of a Decoder with `cfg`, mapped to Hugging Face tensor names."""
  yield ParamSource(("embed",), ("model.embed_tokens.weight",), False, False)
  yield ParamSource(("final_norm",), ("model.norm.weight",), False, False)
  if not cfg.tie_word_embeddings:
    yield ParamSource(("lm_head",), ("lm_head.weight",), True, False)
  for name, (suffix, transpose) in _LAYER_WEIGHTS.items():
    if name in ("q_bias", "k_bias", "v_bias") and not cfg.qkv_bias:
      continue
    if name == "o_bias" and not cfg.o_bias:
      continue
    if name in ("q_norm", "k_norm") and not cfg.qk_norm:
      continue
    names = tuple(f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers))
    if cfg.scan_layers:
      yield ParamSource(("layers", name), names, transpose, True)
    else:
      for i, hf_name in enumerate(names):
        yield ParamSource(("layers", i, name), (hf_name,), transpose, False)


def abstract_model(cfg: DecoderConfig) -> Decoder:
  """The model's structure with ShapeDtypeStruct leaves: no memory is allocated."""
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def state_shardings(model: nnx.Module, mesh: Mesh, rules=sharding.DEFAULT_RULES):
  """NamedShardings for nnx.state(model), from each variable's `logical_axes` metadata."""
  def one(variable):
    axes = variable.get_metadata().get("logical_axes")
    shape = variable.get_value().shape
    if axes is None:
      axes = (None,) * len(shape)
    return sharding.named_sharding(mesh, axes, shape, rules)
  state = nnx.state(model)
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain_like(tree, params: nnx.State):
  """`tree` (gradients, moments: leaves in the order of `params`' Variables) constrained to the
  parameters' shardings on the mesh set by `jax.set_mesh` (none set: unchanged).

  Inside a jitted step the shardings come from each Variable's `logical_axes` metadata, so
  values computed there (a gradient, an accumulator's zeros) stay split like the weights
  instead of being left to XLA, which may replicate them.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or np.prod(list(mesh.shape.values())) == 1:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert len(leaves) == len(variables), (len(leaves), len(variables))

  def one(x, variable):
    axes = variable.get_metadata().get("logical_axes") or (None,) * x.ndim
    return jax.lax.with_sharding_constraint(x, sharding.partition_spec(axes, x.shape, mesh))

  return treedef.unflatten([one(x, v) for x, v in zip(leaves, variables)])


def init_on_mesh(cfg: DecoderConfig, mesh: Mesh, seed: int = 0) -> Decoder:
  """A randomly initialised Decoder whose parameters are created already sharded."""
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  shardings = state_shardings(nnx.merge(graphdef, abstract_state), mesh)

  @jax.jit
  def init():
    state = nnx.state(Decoder(cfg, rngs=nnx.Rngs(seed)))
    return jax.lax.with_sharding_constraint(state, shardings)

  with jax.set_mesh(mesh):
    state = init()
  return nnx.merge(graphdef, state)


def place_on_mesh(cfg: DecoderConfig, mesh: Mesh,
                  read: Callable[[ParamSource, tuple], np.ndarray]) -> Decoder:
  """Builds a Decoder whose every parameter shard is produced by `read(source, index)`.

  `read` returns the numpy block of a parameter (already in our [in, out] layout) for the
  index tuple of slices a device needs, so no device ever holds the whole model.
  """
  graphdef, state = nnx.split(abstract_model(cfg))
  shardings = state_shardings(nnx.merge(graphdef, state), mesh)
  flat = dict(nnx.to_flat_state(state))
  flat_shardings = dict(nnx.to_flat_state(shardings))
  expected = set(flat)
  for source in param_sources(cfg):
    variable = flat[source.path]
    expected.discard(source.path)
    shape, dtype = variable.get_value().shape, variable.get_value().dtype
    def callback(index, source=source, dtype=dtype):
      return np.asarray(read(source, index), dtype=dtype)
    array = jax.make_array_from_callback(shape, flat_shardings[source.path], callback)
    variable.set_value(array)
  for path in sorted(p for p in expected if isinstance(flat[p], lora.LoraParam)):
    variable = flat[path]  # a fresh adapter: the checkpoint holds the weights without them
    expected.discard(path)
    value = lora.initial_value("/".join(map(str, path)), variable.get_value().shape,
                               variable.get_value().dtype)
    variable.set_value(jax.make_array_from_callback(value.shape, flat_shardings[path],
                                                    lambda index, value=value: value[index]))
  if expected:
    raise AssertionError(f"parameters without a source: {sorted(expected)}")
  return nnx.merge(graphdef, state)


def base_graphdef(cfg: DecoderConfig) -> nnx.GraphDef:
  """The graph of a Decoder of `cfg` without adapters: merged with the non-adapter part of a
  LoRA model's state it is the base model (adapters off), with `merge_adapters`' the merged one."""
  return nnx.graphdef(abstract_model(cfg.without_adapters()))


@functools.partial(jax.jit, static_argnames="scale")
def _fold_layers(layers: dict[str, dict[str, jax.Array]], scale: float) -> dict:
  return {prefix: lora.fold(weights, scale) for prefix, weights in layers.items()}


def merge_adapters(model: Decoder) -> Decoder:
  """`model` with its LoRA adapters folded into their projections (W + alpha / r A B): a
  Decoder of cfg.without_adapters() computing the adapted model's logits; `model` itself when
  it has no adapters. Only the adapted projections are new arrays (sharded as before); every
  other weight is shared with `model`."""
  cfg = model.cfg
  if not cfg.lora_rank:
    return model
  _, adapters, base = nnx.split(model, lora.LoraParam, ...)
  flat = dict(nnx.to_flat_state(base))
  layers: dict[tuple, dict[str, jax.Array]] = {}
  for path, variable in nnx.to_flat_state(adapters):
    prefix = path[:-1]  # the layer's path: ("layers",) stacked, ("layers", i) looped
    layers.setdefault(prefix, {p: flat[prefix + (p,)][...] for p in cfg.lora_projections})
    layers[prefix][path[-1]] = variable[...]
  keys = {"/".join(map(str, prefix)): prefix for prefix in layers}
  folded = _fold_layers({k: layers[prefix] for k, prefix in keys.items()}, cfg.lora_scale)
  merged = dict(flat)
  for key, weights in folded.items():
    for proj, value in weights.items():
      old = flat[keys[key] + (proj,)]
      merged[keys[key] + (proj,)] = old.replace(jax.device_put(value, old[...].sharding))
  return nnx.merge(base_graphdef(cfg), nnx.from_flat_state(merged))
