"""MetricsWriter: JSONL rows, resume without duplicates, TensorBoard events, W&B, console
line; StepProgress: a bar on a terminal, plain lines without one."""

import glob
import io
import json
import os
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from configs import common
from rag_r1_jax.training import metrics_writer as mw
from tests.training import fake_wandb


def _tb_events(logdir):
  """Every Event in the event files under logdir, read from their TFRecord framing."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def _tb_scalars(logdir):
  """(tag, step, value) of every scalar in the event files under logdir."""
  return [(v.tag, e.step, v.simple_value) for e in _tb_events(logdir) for v in e.summary.value]


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_writes_jsonl_tensorboard_and_console(tmp_path, capsys):
  with mw.MetricsWriter(str(tmp_path), "rl", total_steps=10, console_every=2) as writer:
    writer.write(1, {"loss": jnp.float32(0.5), "reward": np.float64(0.25)})
    writer.write(2, {"loss": 0.125, "kl": jnp.array([0.001])})
    # Rows are on disk before close.
    assert [r["step"] for r in _rows(writer.path)] == [1, 2]
  assert writer.path == str(tmp_path / "metrics" / "rl.jsonl")
  assert _rows(writer.path) == [{"step": 1, "loss": 0.5, "reward": 0.25},
                                {"step": 2, "loss": 0.125, "kl": 0.0010000000474974513}]
  out = capsys.readouterr().out
  assert out == "rl step 2/10 | kl 0.001 | loss 0.125\n"
  scalars = _tb_scalars(str(tmp_path / "tensorboard" / "rl"))
  assert sorted(scalars) == sorted([("rl/loss", 1, 0.5), ("rl/reward", 1, 0.25),
                                    ("rl/loss", 2, 0.125), ("rl/kl", 2, np.float32(0.001))])


def test_resume_drops_rows_from_the_crashed_run(tmp_path):
  with mw.MetricsWriter(str(tmp_path), "sft", console_every=0) as writer:
    for step in range(6):
      writer.write(step, {"loss": float(step)})
  with open(writer.path, "a") as f:
    f.write('{"step": 6, "lo')  # torn line: the process died mid-write
  with mw.MetricsWriter(str(tmp_path), "sft", start_step=4, console_every=0) as writer:
    assert [r["step"] for r in _rows(writer.path)] == [0, 1, 2, 3]
    for step in range(4, 8):
      writer.write(step, {"loss": 10.0 + step})
  rows = _rows(writer.path)
  assert [r["step"] for r in rows] == list(range(8))
  assert [r["loss"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 14.0, 15.0, 16.0, 17.0]
  assert mw.read_jsonl(writer.path) == rows
  # TensorBoard is told to discard the crashed run's events from step 4 on.
  starts = [e.step for e in _tb_events(str(tmp_path / "tensorboard" / "sft"))
            if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [4]
  # A fresh run (start_step 0) starts a fresh file.
  with mw.MetricsWriter(str(tmp_path), "sft", console_every=0, tensorboard=False) as writer:
    writer.write(0, {"loss": 1.0})
  assert _rows(writer.path) == [{"step": 0, "loss": 1.0}]


def test_nonfinite_values_round_trip(tmp_path):
  with mw.MetricsWriter(str(tmp_path), "rl", console_every=0, tensorboard=False) as writer:
    writer.write(3, {"loss": float("nan"), "grad_norm": float("inf")})
  row = mw.read_jsonl(writer.path)[0]
  assert row["step"] == 3 and np.isnan(row["loss"]) and row["grad_norm"] == float("inf")


def test_console_line_format():
  line = mw.format_console_line("rl", 12, {"reward": 0.41234, "kl": 1.23456e-4, "loss": -3.0})
  assert line == "rl step 12 | kl 0.0001235 | loss -3 | reward 0.4123"
  assert mw.format_console_line("eval", 3, {}, total_steps=7) == "eval step 3/7"


def test_progress_on_a_terminal_is_a_bar_with_key_metrics():
  stream = io.StringIO()
  progress = mw.StepProgress("rl", total=500, initial=100, stream=stream, tty=True)
  progress.update(101, {"reward": 0.41234, "em": np.float32(0.5)})
  progress.update(102, {"reward": 0.5, "em": 0.25})
  bar = progress._bar
  assert (bar.n, bar.total, bar.desc, bar.postfix) == (102, 500, "rl", "reward=0.5, em=0.25")
  progress.close()
  assert "102/500" in stream.getvalue()


def test_progress_without_a_terminal_prints_a_line_every_n_steps(capsys):
  stream = io.StringIO()
  progress = mw.StepProgress("sft", total=7, initial=1, every=3, stream=stream)
  assert not progress.tty  # a StringIO is not a terminal
  for step in range(2, 8):
    progress.update(step, {"loss": step / 8})
  progress.write("sft: epoch 1/1 validation loss 0.5")
  progress.close()
  lines = capsys.readouterr().out.splitlines()
  assert stream.getvalue() == ""  # no bar drawn
  assert [line.split(" | s/step")[0].rsplit(" | ", 1)[0] for line in lines[:2]] == [
      "sft step 3/7 | loss 0.375", "sft step 6/7 | loss 0.75"]
  assert lines[2].startswith("sft step 7/7 | loss 0.875 | ") and lines[2].endswith(" s/step")
  assert lines[3] == "sft: epoch 1/1 validation loss 0.5"
  assert len(lines) == 4


def test_wandb_gets_the_jsonl_rows_once_across_a_resume(tmp_path, monkeypatch):
  wandb = fake_wandb.install(monkeypatch)
  config = _logging_config(wandb=True)
  with mw.stage_writer(config, str(tmp_path), "rl", 0, 4) as writer:
    for step in (1, 2, 3):
      writer.write(step, {"loss": step / 4, "val/em": 0.5})
  (run,) = wandb.runs
  assert run.logged == [{"rl/step": s, "rl/loss": s / 4, "rl/val/em": 0.5} for s in (1, 2, 3)]
  assert [{"step": r["rl/step"], "loss": r["rl/loss"], "val/em": r["rl/val/em"]}
          for r in run.logged] == _rows(writer.path)
  assert run.defined == [("rl/step", None), ("rl/*", "rl/step")] and run.finished
  assert run.init_kwargs["project"] == "proj" and run.init_kwargs["name"] == "tiny"
  assert run.init_kwargs["resume"] == "allow" and run.init_kwargs["config"]["name"] == "tiny"
  # Restarted from a checkpoint at step 1: steps 2 and 3 are rewritten to the JSONL file but
  # W&B, which already has them, gets only the steps after them, in the same run.
  with mw.stage_writer(config, str(tmp_path), "rl", 2, 4) as writer:
    for step in (2, 3, 4):
      writer.write(step, {"loss": step / 4})
  resumed = wandb.runs[1]
  assert resumed.init_kwargs["id"] == run.init_kwargs["id"]
  assert resumed.logged == [{"rl/step": 4, "rl/loss": 1.0}]
  assert [r["step"] for r in _rows(writer.path)] == [1, 2, 3, 4]


def test_stage_writer_without_wandb_needs_no_package(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
  with mw.stage_writer(_logging_config(wandb=False), str(tmp_path), "sft", 0, 2) as writer:
    writer.write(1, {"loss": 1.0})
  assert _rows(writer.path) == [{"step": 1, "loss": 1.0}]
  with pytest.raises(ImportError, match=r"config.logging.wandb.enabled=True needs the wandb "
                     r"package: `pip install wandb`"):
    mw.stage_writer(_logging_config(wandb=True), str(tmp_path), "sft", 0, 2)


def _logging_config(wandb: bool):
  config = common.base_config()
  config.name = "tiny"
  config.logging.wandb.enabled = wandb
  config.logging.wandb.project = "proj"
  return config
