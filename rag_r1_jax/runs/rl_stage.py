"""Stage 2: RL (GRPO or PPO) with the rollout engine and retrieval in the loop.

Each step: take `rl.batch_size` questions (`rl.oversample` times as many when above 1) from the
task's question set s mod N (most tasks have one; a task may give each step its own questions
and documents: tasks/base.py `rl_rows`, `rl_documents`), roll
out `rl.group_size` samples of each, reward the policy's final answers, keep `rl.batch_size`
groups (mixed rewards first: rl/group_filter.py), run the update, validate every
`rl.eval_every` steps (runs/rl_validation.py), log, and checkpoint every
`checkpoint.every_steps` (state, PRNG keys, data-iterator position). A restarted run resumes
from the latest complete checkpoint and replays exactly. The final policy is exported as a HF
directory (rl/model).
"""

import contextlib
import time
from typing import Sequence

import numpy as np

from rag_r1_jax import timing
from rag_r1_jax.data import sources
from rag_r1_jax.data.iterator import BatchIterator
from rag_r1_jax.eval import answer_metrics
from rag_r1_jax.rl import group_filter, kl_control
from rag_r1_jax.rl import rewards as rewards_lib
from rag_r1_jax.rollout.trajectories import Rollout, group_rows
from rag_r1_jax.runs import rl_validation
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import optimizer, train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.metrics_writer import StepProgress, stage_writer

# What each step's console line shows (name on the console -> metric).
STEP_METRICS = {"reward": "reward", "answer_rate": "answer_rate", "em": "em",
                "searches": "searches_per_question", "loss": "loss",
                "rollout_s": "rollout_seconds", "update_s": "update_seconds",
                "step_s": "step_seconds"}


def _phase(shown: bool, what: str):
  """timing.announce(what) when `shown`, else nothing (steps after the first are one line)."""
  return timing.announce(what) if shown else contextlib.nullcontext()


def trajectory_rewards(rollout: Rollout, golds: Sequence[Sequence[str]], name: str,
                       format_weight: float) -> np.ndarray:
  """[rows] float32: rl/rewards.answer_rewards of each row's own final answer."""
  records = rollout.records
  return rewards_lib.answer_rewards([r.answer for r in records],
                                    [golds[r.prompt_index] for r in records], name,
                                    format_weight, [r.response_text for r in records])


def rollout_metrics(rollout: Rollout, rewards: np.ndarray, golds,
                    row_sources: Sequence[str] = ()) -> dict[str, float]:
  """Means over the rolled-out rows; with questions from two or more data sources
  (row_sources: each question's data_source) also 'reward/<source>' and 'em/<source>'."""
  records = rollout.records
  em = [answer_metrics.exact_match(r.answer, golds[r.prompt_index]) for r in records]
  searches = [r.turns for r in records]
  queries = [q for r in records for q in r.queries_per_turn]
  by_source = sources.per_source_means([row_sources[r.prompt_index] for r in records],
                                       reward=rewards, em=em) if row_sources else {}
  return by_source | {
      "reward": float(rewards.mean()),
      "em": float(np.mean(em)),
      "answer_rate": float(np.mean([r.answer is not None for r in records])),
      "searches_per_question": float(np.mean(searches)),
      "queries_per_search": float(np.mean(queries)) if queries else 0.0,
      "response_tokens": float(np.mean([r.total_tokens - r.prompt_tokens for r in records])),
      "generated_tokens": float(np.mean([r.generated_tokens for r in records])),
  }


def rollout_question_count(batch_size: int, oversample: float) -> int:
  """Questions rolled out per step: batch_size x oversample, rounded up."""
  return max(batch_size, int(np.ceil(batch_size * oversample - 1e-9)))


def iterator_states(iterators: Sequence[BatchIterator]) -> dict:
  """The checkpointed data position: one iterator's state, or {"sets": [one per question
  set]}."""
  if len(iterators) == 1:
    return iterators[0].get_state()
  return {"sets": [it.get_state() for it in iterators]}


def set_iterator_states(iterators: Sequence[BatchIterator], state: dict) -> None:
  # An iterator's own state has several fields; one list field is a state per question set
  # (checkpoints written before the key was "sets" name it otherwise).
  [states] = state.values() if len(state) == 1 else [[state]]
  if len(states) != len(iterators):
    raise ValueError(f"the RL checkpoint holds data positions for {len(states)} question sets "
                     f"but the task gives {len(iterators)}; resume with the config the run "
                     "started with")
  for it, s in zip(iterators, states):
    it.set_state(s)


def run(config, mesh, workdir: str, workspace: Workspace | None = None) -> str:
  """Runs (or resumes) the RL stage; returns the exported model directory."""
  ws = workspace or Workspace(config, mesh, workdir)
  rl = config.rl
  final_dir = ws.files.model_dir("rl")
  if ws.files.finished("rl"):
    print(f"rl: finished earlier, policy at {final_dir}", flush=True)
    return final_dir
  model = ws.files.load_model("sft")
  if model is None:
    print("rl: no SFT policy found; starting from the configured model", flush=True)
    model = ws.initial_model()
  state = train_state.create_rl_state(model, config)
  rollout_questions = rollout_question_count(rl.batch_size, rl.oversample)
  sets = ws.task.rl_row_sets()
  iterators = [BatchIterator(ws.task.rl_rows(i), rollout_questions, seed=config.seed + 1009 * i)
               for i in range(sets)]
  manager = ws.files.checkpoint_manager("rl")
  start = manager.latest_step() or 0
  kl_coef = rl.kl_coef  # PPO's reward KL coefficient, moved by rl.kl_ctrl after each step
  if start:
    state, meta = train_state.restore(manager, state, start)
    set_iterator_states(iterators, meta["data"])
    kl_coef = meta.get("kl_coef", kl_coef)
    print(f"rl: resumed from step {start}", flush=True)
  engine = ws.engine(state.merged_model())  # searching the run's retriever
  sampling = SamplingParams.from_config(config.sampling)
  val_questions = (rl_validation.validation_questions(ws, engine, rl.eval_questions)
                   if rl.eval_every else [])
  # Rows of steps after the checkpoint (written before a crash) are dropped; 0 starts afresh.
  writer = stage_writer(config, workdir, "rl", start + 1 if start else 0, rl.steps)
  streak = optimizer.NonfiniteStreak(rl.max_nonfinite_steps, "rl.max_nonfinite_steps")
  progress = StepProgress("rl", rl.steps, initial=start, every=config.logging.console_every)
  for step in range(start, rl.steps):
    batch_rows = next(iterators[step % sets])
    golds = [r["golden_answers"] for r in batch_rows]
    t0 = step_start = time.perf_counter()
    first = step == start  # compiles the sampler, scoring and update: said step by step
    rolling = timing.Stopwatch()
    engine.sampler.update_params(state.merged_model())  # LoRA: adapters folded in
    if rl.offload_during_rollout:
      state = train_state.move_unused_in_rollouts(state, "pinned_host")
    what = (f"rl step {step + 1}: rollout of {len(batch_rows)} questions x {rl.group_size} "
            f"samples (up to {config.rollout.max_turns} searches, "
            f"{config.rollout.max_turn_tokens} tokens a turn; the first compiles the sampler)")
    with _phase(first, what), rolling():
      rollout = engine.searching(ws.rl_retriever(step % sets)).run(
          ws.prompt_texts(batch_rows), sampling=sampling, seed=config.seed * 100_003 + step,
          group_size=rl.group_size, batch_size=rollout_questions)
    if rl.offload_during_rollout:
      state = train_state.move_unused_in_rollouts(state, "device")
    rollout_seconds = time.perf_counter() - t0
    rewards = trajectory_rewards(rollout, golds, rl.reward, rl.format_reward)
    mixed = group_filter.mixed_groups(rewards, rl.group_size)
    groups = group_filter.select_groups(mixed, rl.batch_size)  # all of them if oversample 1
    trained = rollout.take_groups(groups, rl.group_size)
    batch = dict(trained.tensors(), rewards=rewards[group_rows(groups, rl.group_size)])
    t0 = time.perf_counter()
    with _phase(first, f"rl step {step + 1}: update on {len(batch['rewards'])} rows x "
                f"{batch['tokens'].shape[1]} tokens"):
      state, update_metrics = rl_trainer.rl_update(state, batch, config, kl_coef=kl_coef)
    update_seconds = time.perf_counter() - t0
    if "kl_ref_seq_mean" in update_metrics:
      kl_coef = kl_control.next_kl_coef(
          kl_coef, update_metrics["kl_ref_seq_mean"], len(batch["rewards"]), kind=rl.kl_ctrl,
          target=rl.kl_target, horizon=rl.kl_horizon)
    streak = streak.update(update_metrics.get("skipped", 0) == 0, step + 1)
    metrics = rollout_metrics(rollout, rewards, golds,  # over every row rolled out
                              [sources.source_of(r) for r in batch_rows])
    metrics.update(update_metrics, mixed_groups=float(mixed.mean()),
                   trained_mixed_groups=float(mixed[groups].mean()))
    retrieval_seconds = sum(r.retrieval_seconds for r in rollout.records)
    metrics.update(slot_use=rollout.slot_use,  # useful / all decode row-steps
                   rollout_seconds=rollout_seconds, retrieval_seconds=retrieval_seconds,
                   rollout_compile_seconds=rolling.compile_seconds,
                   update_seconds=update_seconds, sequence_width=float(trained.tokens.shape[1]),
                   tokens_per_second=float(rollout.attention_mask.sum()) / (rollout_seconds + update_seconds))
    if rl.eval_every and (step + 1) % rl.eval_every == 0:
      engine.sampler.update_params(state.merged_model())
      if rl.offload_during_rollout:
        state = train_state.move_unused_in_rollouts(state, "pinned_host")
      val = rl_validation.run_validation(engine, val_questions, batch_size=config.eval.batch_size,
                                         seed=config.seed)
      if rl.offload_during_rollout:
        state = train_state.move_unused_in_rollouts(state, "device")
      metrics.update(val)
      progress.write(f"rl step {step + 1}: validation on {len(val_questions)} questions: em "
                     f"{val['val/em']:.4g}, answer rate {val['val/answer_rate']:.4g}, searches "
                     f"{val['val/searches_per_question']:.3g}")
    metrics["step_seconds"] = time.perf_counter() - step_start
    writer.write(step + 1, metrics)
    progress.update(step + 1, {k: metrics[v] for k, v in STEP_METRICS.items()})
    if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == rl.steps:
      manager.save(step + 1, train_state.saved(state),
                   {"step": step + 1, "data": iterator_states(iterators),
                    "config": config.to_dict(), "metrics": metrics, "kl_coef": kl_coef})
  progress.close()
  manager.wait_until_finished()
  writer.close()
  return ws.files.export_model("rl", state.model())
