"""Dense `ops.attention` vs `ops.blocked_attention`: time and temporary memory, op and SFT step.

  op    forward + backward of one attention call (b=1, the default config's 2 kv heads x 2
        groups, head_dim 32, float32, one segment) at each `--lengths`: the dense one with
        the decoder's [t, t] mask, the blocked one in `--block` tiles. Times are per call,
        medians over rounds that run each (2048 / t)^2 times in turn (compilation untimed);
        temp bytes are XLA's `memory_analysis().temp_size_in_bytes` of the compiled function.
  sft   one `sft_step.sft_update` step of the default config's decoder (8 packed rows of
        `--sft_lengths` tokens; the default config packs 256) with `model.attention_block` at
        its default and at 0 (dense), alternating, `--steps` x 256 / length steps a round;
        checks that both give the same loss.
Usage: python experiments/benchmarks/bench_attention.py [--lengths 256,1024,4096] [--repeats 5]
"""

import argparse

import bench_train_step
import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.models import factory, ops
from rag_r1_jax.training import train_state
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.sharding import put_rows


def _dense(q, k, v, segment_ids):
  t = q.shape[1]
  own = (segment_ids[:, :, None] == segment_ids[:, None, :]) | (segment_ids[:, :, None] == 0)
  mask = jnp.tril(jnp.ones((t, t), jnp.bool_))[None] & own & (segment_ids[:, None, :] > 0)
  return ops.attention(q, k, v, mask)


def bench_op(t: int, block: int, repeats: int) -> None:
  rs = np.random.RandomState(0)
  b, kv, groups, d = 1, 2, 2, 32
  q = jnp.asarray(rs.normal(size=(b, t, kv, groups, d)), jnp.float32)
  k, v = (jnp.asarray(rs.normal(size=(b, t, kv, d)), jnp.float32) for _ in range(2))
  segment_ids = jnp.ones((b, t), jnp.int32)
  attend = {"dense": _dense,
            "blocked": lambda *x: ops.blocked_attention(*x, block_q=block, block_k=block)}
  grads, temp = {}, {}
  for name, f in attend.items():
    loss = lambda q, k, v, f=f: jnp.sum(f(q, k, v, segment_ids) ** 2)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    temp[name] = compiled.memory_analysis().temp_size_in_bytes
    grads[name] = lambda c=compiled: jax.block_until_ready(c(q, k, v))
  calls = max(1, (2048 // t) ** 2)
  times = common.alternating_medians(
      {name: lambda fn=fn: [fn() for _ in range(calls)] for name, fn in grads.items()}, repeats)
  times = {name: seconds / calls for name, seconds in times.items()}
  values = {name: fn()[0] for name, fn in grads.items()}
  np.testing.assert_allclose(values["blocked"], values["dense"], rtol=1e-4)
  print(f"  t={t:5d}: dense {times['dense'] * 1e3:8.1f} ms {temp['dense'] / 2**20:8.1f} MiB | "
        f"blocked {times['blocked'] * 1e3:8.1f} ms {temp['blocked'] / 2**20:8.1f} MiB | "
        f"time {times['dense'] / times['blocked']:5.2f}x, temp "
        f"{temp['dense'] / temp['blocked']:6.1f}x less", flush=True)


def bench_sft(length: int, vocab: int, steps: int, repeats: int) -> None:
  config = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(config.mesh)
  default = config.model.attention_block
  sft_hp = sft_step.SFTHparams.from_config(config, 1000)
  steps = max(1, steps * 256 // length)
  batch = put_rows(bench_train_step._sft_batch(vocab, length=length), mesh)
  states, first = {}, {}
  for block in (default, 0):
    model_config = config.model.copy_and_resolve_references()
    model_config.attention_block = block
    model, _ = factory.build_model(model_config, mesh, 0, vocab_size=vocab)  # same seed
    states[block] = train_state.create_sft_state(model, config, 1000)

  def run(block):
    def steps_of():
      for _ in range(steps):
        states[block], metrics = sft_step.sft_update(states[block], batch, sft_hp)
      jax.block_until_ready(metrics)
      first.setdefault(block, float(metrics["loss"]))
    return steps_of

  times = common.alternating_medians({block: run(block) for block in states}, repeats)
  ours, dense = times[default] / steps, times[0] / steps
  path = "blocked" if length > default else "dense"
  print(f"  sft 8 x {length}: attention_block={default} ({path}) {ours * 1e3:7.1f} ms, "
        f"attention_block=0 (dense) {dense * 1e3:7.1f} ms per step -> {dense / ours:.2f}x; "
        f"loss after {steps} steps {first[default]:.6f} / {first[0]:.6f}", flush=True)
  np.testing.assert_allclose(first[default], first[0], rtol=1e-4)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--lengths", default="256,1024,4096")
  parser.add_argument("--block", type=int, default=rag_r1.get_config("mq").model.attention_block)
  parser.add_argument("--sft_lengths", default="256,1024")
  parser.add_argument("--vocab", type=int, default=1500)
  parser.add_argument("--steps", type=int, default=4, help="SFT steps a round at 256 tokens")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"attention forward + backward, b=1, 2 kv heads x 2 groups, d=32, float32; blocked in "
        f"{args.block} x {args.block} tiles; {args.repeats} alternating rounds", flush=True)
  for t in map(int, args.lengths.split(",")):
    bench_op(t, args.block, args.repeats)
  print(f"default config's SFT step, vocab {args.vocab}, {args.repeats} alternating rounds",
        flush=True)
  for length in map(int, args.sft_lengths.split(",")):
    bench_sft(length, args.vocab, args.steps, args.repeats)


if __name__ == "__main__":
  main()
