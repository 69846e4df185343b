"""Training-step time with ops.matmul / ops.attention against the plain formulas under autodiff.

The two differ only in the backward pass's operand order (see rag_r1_jax/models/ops.py). Times
in one process, alternating the two in each round (a switch clears JAX's caches, so every
round compiles both; compilation is not timed):
  sft   one `sft_step.sft_update` step of the default config's shape: 8 packed rows of 256
        tokens, hidden 128, 4 layers, a `--vocab` of 1500 (the world tokenizer's is ~1.5k).
  rl    the gradient of the summed token log-probs over `--rl_rows` x `--rl_seq` padded rows
        (a GRPO microbatch's forward and backward, without the optimizer).
Also checks that both give the same loss and gradient norm. Prints medians and the ratio.
Usage: python experiments/benchmarks/bench_train_step.py [--repeats 3] [--steps 10]
"""

import argparse
import statistics
import time

import common  # noqa: F401  (sets sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs import rag_r1
from rag_r1_jax import sharding
from rag_r1_jax.models import factory, ops
from rag_r1_jax.training import logprobs, train_state
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.sharding import put_rows

VARIANTS = {"ops (ours)": (ops.matmul, ops.attention),
            "autodiff": (ops.reference_matmul, ops.reference_attention)}


def _use(variant: str) -> None:
  ops.matmul, ops.attention = VARIANTS[variant]
  jax.clear_caches()


def _sft_batch(vocab: int, rows: int = 8, length: int = 256, example: int = 20):
  """Packed rows: examples of `example` tokens, segment ids 1, 2, ..., half the tokens trained."""
  rs = np.random.RandomState(0)
  segments = np.repeat(np.arange(1, length // example + 2), example)[:length]
  positions = np.tile(np.arange(example), length // example + 1)[:length]
  return dict(tokens=rs.randint(1, vocab, (rows, length)).astype(np.int32),
              positions=np.broadcast_to(positions, (rows, length)).astype(np.int32),
              attention_mask=np.broadcast_to(segments, (rows, length)).astype(np.int32),
              loss_mask=(rs.rand(rows, length) < 0.5).astype(np.int32))


def _rl_batch(vocab: int, rows: int, seq: int):
  """Padded rows of 40-100% real tokens."""
  rs = np.random.RandomState(1)
  lengths = rs.randint(int(0.4 * seq), seq + 1, rows)
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  return dict(tokens=rs.randint(1, vocab, (rows, seq)).astype(np.int32) * mask,
              positions=np.broadcast_to(np.arange(seq), (rows, seq)).astype(np.int32),
              attention_mask=mask)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
  parser.add_argument("--vocab", type=int, default=1500)
  parser.add_argument("--rl_rows", type=int, default=32)
  parser.add_argument("--rl_seq", type=int, default=256)
  args = parser.parse_args()
  config = rag_r1.get_config("mq")
  mesh = sharding.make_mesh(config.mesh)
  model, _ = factory.build_model(config.model, mesh, 0, vocab_size=args.vocab)
  graphdef, params = nnx.split(model)
  sft_hp = sft_step.SFTHparams.from_config(config, 1000)
  sft_batch = put_rows(_sft_batch(args.vocab), mesh)
  rl_batch = put_rows(_rl_batch(args.vocab, args.rl_rows, args.rl_seq), mesh)

  def rl_loss(params):
    lp, _ = logprobs.token_logprobs(nnx.merge(graphdef, params), rl_batch)
    return -(lp * rl_batch["attention_mask"]).sum() / rl_batch["attention_mask"].sum()

  times = {(task, v): [] for task in ("sft", "rl") for v in VARIANTS}
  checks = {}
  print(f"default config's decoder, vocab {args.vocab}; sft 8 x 256 packed, rl "
        f"{args.rl_rows} x {args.rl_seq}; {args.steps} steps a round, {args.repeats} rounds",
        flush=True)
  for round_ in range(args.repeats):
    for variant in VARIANTS:
      _use(variant)
      fresh = jax.tree.map(jnp.copy, params)  # the SFT step donates its state
      state = train_state.create_sft_state(nnx.merge(graphdef, fresh), config, 1000)
      state, metrics = sft_step.sft_update(state, sft_batch, sft_hp)  # compiles
      first = (float(metrics["loss"]), float(metrics["grad_norm"]))
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = sft_step.sft_update(state, sft_batch, sft_hp)
      jax.block_until_ready(metrics)
      times["sft", variant].append((time.perf_counter() - start) / args.steps)

      grad_fn = jax.jit(jax.value_and_grad(rl_loss))
      loss, grads = grad_fn(params)  # compiles
      rl_first = (float(loss), float(optax.global_norm(grads)))
      start = time.perf_counter()
      for _ in range(args.steps):
        loss, grads = grad_fn(params)
      jax.block_until_ready(grads)
      times["rl", variant].append((time.perf_counter() - start) / args.steps)
      checks[variant] = first + rl_first
  _use("ops (ours)")
  base = "autodiff"
  for task in ("sft", "rl"):
    ours = statistics.median(times[task, "ops (ours)"])
    theirs = statistics.median(times[task, base])
    print(f"  {task}: ops {ours * 1e3:7.1f} ms, autodiff {theirs * 1e3:7.1f} ms per step "
          f"-> {theirs / ours:.2f}x", flush=True)
  a, b = checks["ops (ours)"], checks[base]
  print(f"  first sft step loss {a[0]:.6f} / {b[0]:.6f}, grad norm {a[1]:.6f} / {b[1]:.6f}; "
        f"rl loss {a[2]:.6f} / {b[2]:.6f}, grad norm {a[3]:.6f} / {b[3]:.6f}")
  np.testing.assert_allclose(a, b, rtol=1e-4)


if __name__ == "__main__":
  main()
