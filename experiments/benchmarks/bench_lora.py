"""Full fine-tuning vs LoRA on the same model: GRPO step time and memory, in one process.

A SmolLM2-135M-shaped decoder with random weights (common.SMOLLM2_135M: 30 layers, hidden 576,
vocab 49152, tied embeddings; scanned, remat full, float32), the same rollout batch and the
same GRPO settings with a KL reference (kl_coef > 0): full fine-tuning keeps a copy of the
weights as the reference, LoRA uses the base with adapters off. For each it prints the median
seconds of `rl_update` (reference scoring + one optimizer update; the two alternate, round
by round), the trained / frozen / reference parameter bytes and the optimizer-state bytes of
the train state, and the compiled update step's `memory_analysis()` argument and temp bytes
(XLA:CPU figures), then the LoRA / full ratios.
Usage: python experiments/benchmarks/bench_lora.py [--layers 30] [--rows 4] [--seq 256]
       [--rank 16] [--repeats 3]
"""

import argparse

import common
import jax
import numpy as np
from ml_collections import ConfigDict

from configs import common as config_common
from rag_r1_jax import sharding
from rag_r1_jax.models import lora, params
from rag_r1_jax.models.config import DecoderConfig
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.rl import step as rl_step

GROUP = 4


def decoder_config(layers: int) -> DecoderConfig:
  s = common.SMOLLM2_135M
  return DecoderConfig(
      vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
      intermediate_size=s["intermediate_size"], num_layers=layers,
      num_heads=s["num_attention_heads"], num_kv_heads=s["num_key_value_heads"],
      head_dim=s["hidden_size"] // s["num_attention_heads"], rope_theta=s["rope_theta"],
      max_position_embeddings=s["max_position_embeddings"], rms_norm_eps=s["rms_norm_eps"],
      tie_word_embeddings=True, scan_layers=True, remat="full")


def run_config(rows: int) -> ConfigDict:
  c = config_common.base_config()
  c.model.logprob_chunk = 256
  c.rl.update(dict(batch_size=rows // GROUP, mini_batch_size=rows // GROUP, group_size=GROUP,
                   learning_rate=1e-5, warmup_ratio=0.0, kl_coef=0.001, entropy_coef=0.0))
  return c


def make_batch(rows: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
  """Right-padded trajectories: a quarter prompt, an information block masked out."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
  lengths = rng.integers(seq * 3 // 4, seq + 1, rows)
  attention = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  mask = attention.astype(np.float32)
  mask[:, :seq // 4] = 0
  mask[:, seq // 4 + 16:seq // 4 + 48] = 0
  return {"tokens": tokens * attention, "attention_mask": attention, "loss_mask": mask,
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy(),
          "sampler_logprobs": (-rng.uniform(0.5, 5.0, (rows, seq)) * mask).astype(np.float32),
          "rewards": rng.integers(0, 2, rows).astype(np.float32),
          "group_ids": (np.arange(rows) // GROUP).astype(np.int32)}


def nbytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def prepare(cfg: DecoderConfig, config: ConfigDict, batch: dict, mesh) -> tuple[dict, object]:
  """The memory figures of one way of training `cfg`, and its zero-argument step."""
  state = train_state.create_rl_state(params.init_on_mesh(cfg, mesh), config)
  hp = rl_step.RLHparams.from_config(config)
  # The update step's compiled memory, on the minibatch rl_update gives it (+ ref log-probs).
  names = ("tokens", "positions", "attention_mask", "loss_mask", "sampler_logprobs")
  mb = sharding.put_rows({k: batch[k] for k in names}, mesh)
  mb.update(advantages=mb["loss_mask"], ref_logprobs=mb["sampler_logprobs"])
  with jax.set_mesh(mesh):
    memory = rl_step.minibatch_update.lower(state, mb, hp).compile().memory_analysis()
  figures = {"trained": nbytes(state.params), "frozen": nbytes(state.frozen),
             "reference": nbytes(state.ref_params), "optimizer": nbytes(state.opt_state),
             "argument": memory.argument_size_in_bytes, "temp": memory.temp_size_in_bytes}
  holder = {"state": state}

  def step():
    holder["state"], metrics = rl_trainer.rl_update(holder["state"], batch, config)
    assert metrics["skipped"] == 0, metrics

  return figures, step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=30)
  parser.add_argument("--rows", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--alpha", type=float, default=32.0)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  base = decoder_config(args.layers)
  config = run_config(args.rows)
  batch = make_batch(args.rows, args.seq, base.vocab_size)
  adapted = base.replace(lora_rank=args.rank, lora_alpha=args.alpha,
                         lora_targets=tuple(lora.TARGETS))
  print(f"SmolLM2-135M shape, {args.layers} layers, GRPO + KL reference, {args.rows} rows x "
        f"{args.seq} tokens, float32, {jax.devices()[0].platform} x 1; LoRA rank {args.rank} "
        f"on {','.join(lora.TARGETS)}", flush=True)
  results, steps = {}, {}
  for name, cfg in (("full", base), ("lora", adapted)):
    results[name], steps[name] = prepare(cfg, config, batch, mesh)
  # Alternating rounds, so that a busy machine slows both alike.
  for name, seconds in common.alternating_medians(steps, args.repeats).items():
    results[name]["seconds"] = seconds
  mib = lambda n: f"{n / 2**20:9.1f}"  # noqa: E731
  columns = ("trained", "frozen", "reference", "optimizer", "argument", "temp")
  print(f"{'':6} {'step s':>8} " + " ".join(f"{c + ' MiB':>13}" for c in columns))
  for name, r in results.items():
    print(f"{name:6} {r['seconds']:8.2f} " + " ".join(f"{mib(r[c]):>13}" for c in columns))
  full, lo = results["full"], results["lora"]
  ratio = lambda k: lo[k] / full[k] if full[k] else float("nan")  # noqa: E731
  own = lambda r: r["trained"] + r["reference"] + r["optimizer"]  # noqa: E731
  print(f"lora / full: step time {ratio('seconds'):.2f}, trained + reference + optimizer bytes "
        f"{own(lo) / own(full):.3f}, argument {ratio('argument'):.2f}, temp {ratio('temp'):.2f}")


if __name__ == "__main__":
  main()
