"""The RL stage: per-step rollout metrics exact on hand-made records; validation every
rl.eval_every steps on a scripted toy policy (its rows, W&B, resume, unchanged training)."""

import contextlib
import functools
import io
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from configs import common
from rag_r1_jax import sharding
from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout.trajectories import Rollout, RowRecord
from rag_r1_jax.runs import rl_stage
from rag_r1_jax.runs.stage_files import StageFiles
from rag_r1_jax.runs.workspace import Workspace
from rag_r1_jax.tasks.base import Task
from rag_r1_jax.training import metrics_writer
from tests.sampling import toy
from tests.training import fake_wandb


def _rollout(answers, prompt_index, turns):
  records = [RowRecord(prompt_index=p, response_text="", answer=a, turns=t,
                       queries_per_turn=[2] * t, finish_reason="answer" if a else "eos",
                       generated_tokens=5, prompt_tokens=3, total_tokens=10,
                       decode_seconds=0.0, retrieval_seconds=0.0, total_seconds=0.0)
             for a, p, t in zip(answers, prompt_index, turns)]
  n = len(records)
  zeros = np.zeros((n, 1))
  return Rollout(tokens=zeros, positions=zeros, attention_mask=zeros, loss_mask=zeros,
                 sampler_logprobs=zeros, group_ids=np.asarray(prompt_index), records=records)


def test_rollout_metrics_per_data_source():
  rollout = _rollout(["paris", "rome", None, "oslo"], [0, 0, 1, 2], [1, 2, 0, 1])
  golds = [["Paris"], ["Lima"], ["Oslo"]]
  rewards = np.array([1.0, 0.0, 0.0, 1.0])
  got = rl_stage.rollout_metrics(rollout, rewards, golds, ["nq", "hotpotqa", "nq"])
  assert got["em"] == 0.5 and got["reward"] == 0.5 and got["answer_rate"] == 0.75
  assert got["searches_per_question"] == 1.0 and got["queries_per_search"] == 2.0
  assert got["response_tokens"] == 7.0 and got["generated_tokens"] == 5.0
  # nq: rows 0, 1 (question 0) and 3 (question 2); hotpotqa: row 2.
  assert got["em/nq"] == 2 / 3 and got["reward/nq"] == 2 / 3
  assert got["em/hotpotqa"] == 0.0 and got["reward/hotpotqa"] == 0.0


def test_rollout_metrics_one_source_adds_nothing():
  rollout = _rollout(["paris"], [0], [1])
  got = rl_stage.rollout_metrics(rollout, np.array([1.0]), [["Paris"]], ["nq"])
  assert not any("/" in key for key in got)


# ---- the stage on a scripted toy policy: validation, W&B, resume --------------------------


class ToyTask(Task):
  """Two train questions; evaluation on two data sources."""

  def train_rows(self):
    return [{"id": f"t{i}", "question": f"q{i}", "golden_answers": ["paris"]} for i in range(2)]

  def eval_datasets(self):
    row = lambda i, gold: {"id": str(i), "question": f"v{i}", "golden_answers": [gold]}  # noqa
    return {"nq": [row(0, "paris"), row(1, "paris")],
            "hotpotqa": [row(2, "paris"), row(3, "Beta"), row(4, "paris")]}


class ToyRLWorkspace(Workspace):
  """The toy bigram policy searching one document; every prompt templated to 'x Q:'."""

  @functools.cached_property
  def tokenizer(self):
    tokenizer = toy.toy_tokenizer()
    tokenizer.chat_template = "{{ 'x Q:' }}"
    return tokenizer

  @functools.cached_property
  def retriever(self):
    return ExactRetriever([Document("d1", "Alpha", "alpha is near paris")])

  def initial_model(self):
    graphdef, state = _toy_split(self.mesh)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), state))  # training donates it

  @functools.cached_property
  def task(self):
    return ToyTask(self.config)

  @functools.cached_property
  def files(self):
    return ToyStageFiles(self.config, self.mesh, self.workdir, lambda: self.tokenizer)


class ToyStageFiles(StageFiles):
  """Keeps the exported parameters in memory instead of writing a HF directory."""

  exported: dict

  def export_model(self, stage, model):
    self.exported = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return self.model_dir(stage)


@functools.cache
def _toy_split(mesh):
  tokenizer = toy.toy_tokenizer()
  model = toy.bigram_model(tokenizer, SUCCESSOR, default="<answer>", mesh=mesh, hidden=128)
  # After <answer>: "paris" (greedy) or "beta" (sampled now and then), so GRPO groups differ.
  toy.fork_after(model, tokenizer, "<answer>", {"paris": 1.0, "beta": 0.7})
  return nnx.split(model)


SUCCESSOR = {"Q:": "<search>", "<search>": "alpha", "alpha": "</search>",
             "paris": "</answer>", "beta": "</answer>"}
VAL_KEYS = {"val/em", "val/answer_rate", "val/searches_per_question", "val/seconds",
            "val/em/nq", "val/em/hotpotqa", "val/searches_per_question/nq",
            "val/searches_per_question/hotpotqa"}
TIMES = ("rollout_seconds", "retrieval_seconds", "update_seconds", "tokens_per_second",
         "val/seconds", "rollout_compile_seconds", "scoring_seconds", "scoring_compile_seconds",
         "train_seconds", "train_compile_seconds", "step_seconds")


def _toy_config(eval_every: int):
  c = common.base_config()
  c.name = "toy"
  c.rl.update(dict(steps=4, batch_size=2, mini_batch_size=2, group_size=4, learning_rate=1e-3,
                   warmup_ratio=0.0, kl_coef=0.0, entropy_coef=0.0, eval_every=eval_every,
                   eval_questions=0))
  c.rollout.update(dict(max_turns=2, max_turn_tokens=8, max_obs_length=32,
                        max_total_length=256))
  c.retrieval.topk = 1
  c.checkpoint.update(dict(every_steps=2, async_save=False))
  c.eval.batch_size = 4
  return c


def _run_rl(workdir, config):
  mesh = sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  ws = ToyRLWorkspace(config, mesh, str(workdir))
  rl_stage.run(config, mesh, str(workdir), workspace=ws)
  return ws, metrics_writer.read_jsonl(os.path.join(workdir, "metrics", "rl.jsonl"))


def _without_times(rows):
  return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
  """Four steps validating every second one, logged to a fake W&B as well."""
  monkeypatch = pytest.MonkeyPatch()
  wandb = fake_wandb.install(monkeypatch)
  workdir = tmp_path_factory.mktemp("validated")
  config = _toy_config(eval_every=2)
  config.logging.wandb.enabled = True
  config.logging.console_every = 1
  console = io.StringIO()
  with contextlib.redirect_stdout(console):
    ws, rows = _run_rl(workdir, config)
  monkeypatch.undo()
  return workdir, ws, rows, wandb.runs, console.getvalue()


@pytest.mark.slow
def test_validation_rows_at_every_eval_step_and_wandb_gets_them(validated_run):
  _, _, rows, (wandb_run,), _ = validated_run
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert [sorted(k for k in r if k.startswith("val/")) for r in rows] == [
      [], sorted(VAL_KEYS), [], sorted(VAL_KEYS)]
  for row in rows[1::2]:  # greedy: search once, answer "paris"; "Beta" is the one miss
    assert row["val/em"] == 0.8 and row["val/answer_rate"] == 1.0
    assert row["val/em/nq"] == 1.0 and row["val/em/hotpotqa"] == 2 / 3
    assert row["val/searches_per_question"] == 1.0 == row["val/searches_per_question/hotpotqa"]
  assert [{k.removeprefix("rl/"): v for k, v in logged.items()}
          for logged in wandb_run.logged] == rows
  assert wandb_run.finished


@pytest.mark.slow
def test_validation_leaves_training_unchanged(validated_run, tmp_path):
  _, validated, validated_rows, _, _ = validated_run
  plain, plain_rows = _run_rl(tmp_path, _toy_config(eval_every=0))
  assert validated.files.exported.keys() == plain.files.exported.keys()
  for name, value in plain.files.exported.items():
    np.testing.assert_array_equal(validated.files.exported[name], value, err_msg=str(name))
  strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("val/")}  # noqa
                        for r in _without_times(rows)]
  assert strip(validated_rows) == strip(plain_rows)


@pytest.mark.slow
def test_a_resumed_run_logs_each_validation_once(validated_run, tmp_path, monkeypatch):
  workdir, _, rows, _, _ = validated_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "rl" / "checkpoints" / "4")  # as if the run died after logging step 4
  wandb = fake_wandb.install(monkeypatch)
  config = _toy_config(eval_every=2)
  config.logging.wandb.enabled = True
  _, resumed = _run_rl(copy, config)
  assert _without_times(resumed) == _without_times(rows)
  (run,) = wandb.runs
  assert run.logged == []  # W&B already had steps 3 and 4 from the first run


@pytest.mark.slow
def test_the_console_says_what_each_phase_does_and_each_step_s_metrics(validated_run):
  *_, console = validated_run
  lines = console.splitlines()
  rollout = ("rl step 1: rollout of 2 questions x 4 samples (up to 2 searches, 8 tokens a turn; "
             "the first compiles the sampler)")
  assert lines.index(rollout + " ...") < lines.index(next(
      line for line in lines if line.startswith(rollout + ": done in ")))
  update = next(line for line in lines if line.startswith("rl step 1: update on 8 rows x "))
  width = int(update.split(" rows x ")[1].split()[0])
  update = update.removesuffix(" ...")
  compiling = f"compiling rl update for [8, {width}] in 1 microbatch(es) ..."
  compiled = next(i for i, line in enumerate(lines) if line.startswith(
      f"rl update for [8, {width}] in 1 microbatch(es): compiled in "))
  assert lines.index(update + " ...") < lines.index(compiling) < compiled
  assert not any(line.startswith("rl step 2: rollout") for line in lines)  # first step only
  steps = [line for line in lines if line.startswith("rl step ") and "/4 |" in line]
  assert [line.split(" |")[0] for line in steps] == [f"rl step {s}/4" for s in (1, 2, 3, 4)]
  for line in steps:
    names = [part.split()[0] for part in line.split(" | ")[1:-1]]
    assert names == sorted(rl_stage.STEP_METRICS), line
    assert line.endswith(" s/step")


def test_data_positions_resume_from_either_checkpoint_key():
  """One position per question set, saved under "sets" (or "draws", the key of checkpoints
  written before the synthetic world became a task), resumes each iterator where it was."""
  from rag_r1_jax.data.iterator import BatchIterator
  made = [BatchIterator(list(range(10)), 2, seed=i) for i in range(2)]
  next(made[0]), next(made[1]), next(made[1])
  saved = rl_stage.iterator_states(made)
  assert list(saved) == ["sets"]
  for state in (saved, {"draws": saved["sets"]}):
    fresh = [BatchIterator(list(range(10)), 2, seed=i) for i in range(2)]
    rl_stage.set_iterator_states(fresh, state)
    assert [it.get_state() for it in fresh] == saved["sets"]
  with pytest.raises(ValueError, match="positions for 2 question sets but the task gives 1"):
    rl_stage.set_iterator_states([BatchIterator(list(range(10)), 2, seed=0)], saved)
