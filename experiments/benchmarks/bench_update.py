"""GRPO update-step throughput (trajectory tokens/s): our jitted step vs a PyTorch AdamW step.

Same 12M Qwen2 weights (transformers' random init), same padded batch (B x T tokens, the
prompt and an information block masked out), same loss (clipped ratio + k3 KL to a reference,
token-mean over the mask), global-norm clipping and AdamW, in one process. Prints median step
times, tokens/s, the ratio, and peak memory (maxrss; JAX device memory stats when available).
Usage: python experiments/benchmarks/bench_update.py [--batch 8] [--seq 256] [--repeats 5]
"""

import argparse
import resource
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch
from ml_collections import ConfigDict

from rag_r1_jax.rl import advantages as adv_lib
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import step as rl_step

CLIP, KL_COEF, LR = 0.2, 0.001, 1e-6


def make_batch(batch: int, seq: int, vocab: int, group: int = 4) -> dict[str, np.ndarray]:
  """Right-padded trajectories: 64-token prompt, response with a 32-token information block."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
  lengths = rng.integers(seq * 3 // 4, seq + 1, batch)
  attention = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  mask = attention.astype(np.float32)
  mask[:, :64] = 0
  mask[:, 96:128] = 0
  return {"tokens": tokens * attention, "attention_mask": attention, "loss_mask": mask,
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
          "rewards": rng.integers(0, 2, batch).astype(np.float32),
          "group_ids": (np.arange(batch) // group).astype(np.int32)}


def config(batch: int, group: int) -> ConfigDict:
  from configs import common as config_common
  c = config_common.base_config()
  c.rl.update(dict(batch_size=batch // group, mini_batch_size=batch // group, group_size=group,
                   learning_rate=LR, warmup_ratio=0.0, kl_coef=KL_COEF, entropy_coef=0.0,
                   clip_eps_low=CLIP, clip_eps_high=CLIP))
  return c


def time_steps(step, repeats: int) -> float:
  """Median seconds of step() after one warm-up call (step blocks until done)."""
  step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_jax(model_dir: str, batch: dict, repeats: int, group: int) -> float:
  model, cfg = common.jax_model(model_dir)
  cfg_rl = config(batch["tokens"].shape[0], group)
  state = train_state.create_rl_state(model, cfg_rl)
  hp = rl_step.RLHparams.from_config(cfg_rl)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  scored = rl_step.score(state, jb, hp)
  adv = adv_lib.grpo_advantages(jb["rewards"], jb["loss_mask"], group_ids=jb["group_ids"])
  mb = {k: jb[k] for k in ("tokens", "positions", "attention_mask", "loss_mask")}
  mb.update(old_logprobs=scored["old_logprobs"] - 0.01 * jb["loss_mask"],
            ref_logprobs=scored["ref_logprobs"], advantages=adv)
  holder = {"state": state}

  def step():
    holder["state"], metrics = rl_step.minibatch_update(holder["state"], mb, hp)
    jax.block_until_ready(metrics["loss"])

  return time_steps(step, repeats)


def bench_torch(model_dir: str, batch: dict, repeats: int, group: int) -> float:
  model = common.torch_model(model_dir).train()
  ref = common.torch_model(model_dir)
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
  tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
  attn = torch.as_tensor(batch["attention_mask"], dtype=torch.long)
  mask = torch.as_tensor(batch["loss_mask"][:, 1:])
  targets = tokens[:, 1:]
  adv_np = np.asarray(adv_lib.grpo_advantages(jnp.asarray(batch["rewards"]),
                                              jnp.asarray(batch["loss_mask"]),
                                              group_ids=jnp.asarray(batch["group_ids"])))
  adv = torch.as_tensor(np.ascontiguousarray(adv_np[:, 1:]))

  def token_logp(m):
    logits = m(input_ids=tokens, attention_mask=attn).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]

  with torch.no_grad():
    ref_lp = token_logp(ref)
    old_lp = token_logp(model) - 0.01 * mask

  def step():
    lp = token_logp(model)
    ratio = torch.exp(lp - old_lp)
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - CLIP, 1 + CLIP))
    kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
    loss = ((pg + KL_COEF * kl) * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return time_steps(step, repeats)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads")
  model_dir = common.small_qwen2_dir()
  batch = make_batch(args.batch, args.seq, common.SMALL_QWEN2["vocab_size"], args.group)
  n = args.batch * args.seq
  ours = bench_jax(model_dir, batch, args.repeats, args.group)
  stats = jax.devices()[0].memory_stats() or {}
  rss_jax = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  theirs = bench_torch(model_dir, batch, args.repeats, args.group)
  print(f"GRPO update step, 12M Qwen2, batch {args.batch}x{args.seq} "
        f"({int(batch['loss_mask'].sum())} loss tokens):")
  print(f"  jax   {n / ours:9.0f} tok/s ({ours * 1e3:8.1f} ms)")
  print(f"  torch {n / theirs:9.0f} tok/s ({theirs * 1e3:8.1f} ms)")
  print(f"  ratio jax/torch {theirs / ours:5.2f}x")
  peak = stats.get("peak_bytes_in_use")
  rss_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"  peak maxrss {rss_jax:.0f} MiB after the jax step, {rss_all:.0f} MiB after torch too; "
        f"jax device peak "
        f"{f'{peak / 2**20:.0f} MiB' if peak else 'n/a on this platform'}")


if __name__ == "__main__":
  main()
