"""How many SFT steps does the default decoder need to learn the comparison decision alone?

Trains a fresh decoder of the config's size with the config's SFT optimizer, schedule and
packing on decision drills only (`teacher.decision_drills`: the question, the thought with
every value in context, the winner's name trained) and prints, every `--every` steps, the
teacher-forced accuracy of each answer token on held-out drills (argmax over the whole
vocabulary): `<answer>`, the winner's first name token (the decision), its second (the
completion: the world tokenizer writes each name word as one token), then the space before
`</answer>`. It tells a capacity limit (no learning at any length) from a data-volume one
(learning, given enough drills) without a full SFT run.

Usage: python experiments/diagnostics/drill_learning_curve.py --workdir runs/rag_r1_mq
       [--steps 1000] [--every 200] [--rows 13 | --pad 64] [--variant mq]
The model, SFT settings, world and tokenizer are configs/rag_r1.py's (`--variant`): `<workdir>/tokenizer` when the workdir holds a
run (the tokenizer that run trained with), otherwise built there. Nothing else is written.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from configs import rag_r1  # noqa: E402
from rag_r1_jax import sharding  # noqa: E402
from rag_r1_jax.tasks.synthetic_world import teacher  # noqa: E402
from rag_r1_jax.runs.workspace import Workspace  # noqa: E402
from rag_r1_jax.training import train_state  # noqa: E402
from rag_r1_jax.training.sft import data as sft_data  # noqa: E402
from rag_r1_jax.training.sft import step as sft_step  # noqa: E402

_ANSWER_TOKENS = 4  # "<answer>", first word, second word, the space before "</answer>"


def drill_examples(tokenizer, world, count: int, seed: int) -> list[sft_data.SFTExample]:
  """`count` decision drills as SFT examples (only the answer segment trained)."""
  return sft_data.whole_examples(tokenizer, teacher.decision_drills(world, count, seed))


def answer_accuracy(examples: list[sft_data.SFTExample], predicted: np.ndarray) -> np.ndarray:
  """Fraction of examples whose k-th answer token is the argmax, k < _ANSWER_TOKENS.

  predicted[i, t]: the argmax next token after position t of example i (padded batch).
  """
  hits = np.zeros(_ANSWER_TOKENS)
  for i, e in enumerate(examples):
    targets = np.nonzero(e.loss_mask)[0][:_ANSWER_TOKENS]
    hits[:len(targets)] += predicted[i, targets - 1] == e.tokens[targets]
  return hits / len(examples)


def main(argv=None) -> np.ndarray:
  """Trains and prints the learning curve; returns the last held-out accuracies."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a run (its tokenizer/) or a new folder")
  parser.add_argument("--variant", default="mq", choices=("mq", "sq", "smoke"))
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--every", type=int, default=200)
  parser.add_argument("--rows", type=int, default=0,
                      help="packed rows per step (default sft.batch_size)")
  parser.add_argument("--pad", type=int, default=0,
                      help="N: padded batches of N drills instead of packed rows")
  parser.add_argument("--held_out", type=int, default=512)
  args = parser.parse_args(argv)
  if args.steps < 1 or args.every < 1 or args.held_out < 1:
    parser.error("--steps, --every and --held_out must be positive")

  config = rag_r1.get_config(args.variant)
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  ws = Workspace(config, mesh, args.workdir)
  tokenizer, world, model = ws.tokenizer, ws.task.world, ws.initial_model()

  # Enough drills that no batch repeats one; the held-out drills come from another seed.
  pack, rows = config.sft.pack_length, args.rows or config.sft.batch_size
  with config.unlocked():
    config.sft.batch_size = rows
  count = args.steps * (args.pad or rows * (pack // 32))
  train = drill_examples(tokenizer, world, count, config.seed + 1)
  if args.pad:
    plan = [list(range(i * args.pad, (i + 1) * args.pad)) for i in range(args.steps)]
  else:
    plan = sft_data.pack_plan([len(e) for e in train], rows, pack, config.seed, 0)
  if len(plan) < args.steps:
    raise ValueError(f"{len(train)} drills fill only {len(plan)} packed batches")
  held_out = drill_examples(tokenizer, world, args.held_out, config.seed + 2)
  eval_batch = sft_data.pad_batch(held_out, len(held_out), 64)

  state = train_state.create_sft_state(model, config, args.steps)
  hp = sft_step.SFTHparams.from_config(config, args.steps)
  predict = jax.jit(lambda state, tokens: state.model()(tokens)[0].argmax(-1))
  shape = f"{args.pad} padded drills" if args.pad else f"{rows} x {pack} packed tokens"
  print(f"{args.steps} steps of {shape} of decision drills; held-out accuracy of "
        f"<answer> / first word / second word / space", flush=True)
  start = time.time()
  for step, indices in enumerate(plan[:args.steps], start=1):
    batch = (sft_data.pad_batch([train[i] for i in indices], len(indices), 64) if args.pad
             else sft_data.pack_batch(train, indices, pack))
    state, metrics = sft_step.sft_update(state, sharding.put_rows(batch, mesh), hp)
    if step % args.every == 0 or step == args.steps:
      predicted = np.asarray(predict(state, eval_batch["tokens"]))
      acc = answer_accuracy(held_out, predicted)
      print(f"step {step:5d}  loss {float(metrics['loss']):.3f}  accuracy "
            + " / ".join(f"{a:.3f}" for a in acc) + f"  ({time.time() - start:.0f} s)",
            flush=True)
  return acc


if __name__ == "__main__":
  main()
