"""Stage 1: format-learning SFT, keeping the lowest-validation-loss policy.

Data: `sft.data_path` (alpaca / LLaMA-Factory JSON, how RAG-R1 ships its SFT set), or the
task's scripted demonstrations (tasks/base.py `demonstrations`), searching
through the run's own retriever so the `<information>` text is exactly what the rollout engine
inserts. With `sft.cut_subsamples` every trajectory is cut at each policy turn (the paper's
recipe); otherwise one example per trajectory trains all its policy turns at once (the same
targets, a third of the compute). Checkpoints every `checkpoint.every_steps` resume mid-epoch.

A step whose loss or gradients are not finite is skipped; `sft.max_nonfinite_steps` skipped in a
row halt the run (as rl.max_nonfinite_steps does in RL), and a policy whose validation loss or parameters are
not finite is never exported.
"""

import math
import time

import numpy as np

from rag_r1_jax import assets, sharding, timing
from rag_r1_jax.rollout import observation
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.training import optimizer, train_state
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.sft import step as sft_step
from rag_r1_jax.training.metrics_writer import StepProgress, stage_writer


def build_examples(ws: Workspace) -> list[sft_data.SFTExample]:
  """Token ids + loss masks for every SFT example of the run."""
  config, tokenizer = ws.config, ws.tokenizer
  if config.sft.data_path:
    from rag_r1_jax.data import qa_builders
    rows = qa_builders.load_split("sft", "train", files={"train": assets.resolve(config.sft.data_path)},
                                  tfds_dir=config.data.tfds_dir or None)
    return [sft_data.encode_alpaca_row(tokenizer, dict(r)) for r in rows]
  if not ws.task.has_demonstrations:
    raise ValueError(f"config.sft.data_path is empty and config.data.source="
                     f"{config.data.source!r} writes no demonstrations: give an "
                     "alpaca/LLaMA-Factory JSON file for SFT")
  truncate = observation.token_truncate(
      lambda t: tokenizer.encode(t, add_special_tokens=False),
      lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
  retriever = ws.retriever
  with timing.announce(f"sft: the {config.data.source} demonstrations (searching the "
                       "run's retriever)"):
    kept = ws.task.demonstrations(retriever, truncate, ws.prompt_variant)
  if config.sft.cut_subsamples:
    return sft_data.subsample_examples(tokenizer, kept)
  return sft_data.whole_examples(tokenizer, kept)


def run(config, mesh, workdir: str, workspace: Workspace | None = None) -> str:
  """Runs (or resumes) SFT; returns the exported best policy's directory."""
  ws = workspace or Workspace(config, mesh, workdir)
  sft = config.sft
  final_dir = ws.files.model_dir("sft")
  if ws.files.finished("sft"):
    print(f"sft: finished earlier, policy at {final_dir}", flush=True)
    return final_dir
  examples, dropped = sft_data.drop_long(build_examples(ws), sft.max_length)
  if dropped:
    print(f"sft: dropped {dropped} examples longer than sft.max_length={sft.max_length}")
  if 0 < sft.max_examples < len(examples):
    keep = np.random.default_rng(config.seed).choice(len(examples), sft.max_examples,
                                                     replace=False)
    print(f"sft: training on {sft.max_examples} of {len(examples)} examples (sft.max_examples)")
    examples = [examples[i] for i in sorted(keep)]
  train, validation = sft_data.split_train_validation(examples, sft.validation_fraction,
                                                      config.seed)
  if not train:
    raise ValueError("sft: no training examples left (check sft.data_path / sft.max_length)")
  pack = sft.pack_length
  per_epoch = [sft_data.epoch_steps(train, sft.batch_size, config.seed, e, pack)
               for e in range(sft.epochs)]
  first_step = [sum(per_epoch[:e]) for e in range(sft.epochs)]
  total = sum(per_epoch)
  state = train_state.create_sft_state(ws.initial_model(), config, total)
  hp = sft_step.SFTHparams.from_config(config, total, sharding.batch_shards(mesh))
  manager = ws.files.checkpoint_manager("sft")
  meta = {"epoch": 0, "batch": 0, "best_validation_loss": None}
  start = manager.latest_step() or 0
  if start:
    state, meta = train_state.restore(manager, state, start)
    print(f"sft: resumed at step {start} (epoch {meta['epoch']}, batch {meta['batch']})", flush=True)
  packed = f" (packed into rows of {pack} tokens)" if pack else ""
  print(f"sft: {len(train)} train / {len(validation)} validation examples{packed}, "
        f"{per_epoch[0]} steps per epoch x {sft.epochs} epochs", flush=True)
  writer = stage_writer(config, workdir, "sft", start + 1 if start else 0, total)
  progress = StepProgress("sft", total, initial=start, every=config.logging.console_every)
  step, step_start = start, time.perf_counter()
  streak = optimizer.NonfiniteStreak(config.sft.max_nonfinite_steps, "sft.max_nonfinite_steps")
  for epoch in range(meta["epoch"], sft.epochs):
    first_batch = meta["batch"] if epoch == meta["epoch"] else 0

    def on_step(state, metrics, epoch=epoch):
      nonlocal step, streak, step_start
      step += 1
      step_seconds, step_start = time.perf_counter() - step_start, time.perf_counter()
      streak = streak.update(metrics["skipped"] == 0, step)
      batch_index = step - first_step[epoch]
      writer.write(step, dict(metrics, epoch=epoch))
      progress.update(step, {"loss": metrics["loss"], "epoch": epoch,
                             "tokens": metrics["tokens"], "step_s": step_seconds})
      if step % config.checkpoint.every_steps == 0 and batch_index < per_epoch[epoch]:
        manager.save(step, train_state.saved(state), dict(meta, epoch=epoch, batch=batch_index))

    state, _ = sft_step.sft_epoch(state, train, hp, epoch, start_batch=first_batch,
                                    on_step=on_step)
    loss = sft_step.sft_validation_loss(state, validation or train, hp)
    writer.write(step, {"validation_loss": loss, "epoch": epoch})
    if not math.isfinite(loss) or not sft_step.params_finite(state):
      what = (f"validation loss is {loss}" if not math.isfinite(loss)
              else "parameters are not finite")
      raise FloatingPointError(
          f"sft: after epoch {epoch + 1} the policy's {what}; it is not exported. Lower "
          f"sft.learning_rate (now {sft.learning_rate}) or check the data.")
    best = meta["best_validation_loss"]
    if best is None or loss < best:
      meta["best_validation_loss"] = loss
      ws.files.export_model("sft_best", state.model())  # -> sft_best/model
    progress.write(f"sft: epoch {epoch + 1}/{sft.epochs} validation loss {loss:.4f} "
              f"(best {meta['best_validation_loss']:.4f})")
    meta.update(epoch=epoch + 1, batch=0)
    manager.save(step, train_state.saved(state), dict(meta))
  progress.close()
  manager.wait_until_finished()
  writer.close()
  ws.files.copy_model("sft_best", "sft")
  print(f"sft: best policy (validation loss {meta['best_validation_loss']:.4f}) at {final_dir}",
        flush=True)
  return final_dir
