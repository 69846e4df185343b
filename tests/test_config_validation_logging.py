"""Start-up validation of RL validation and logging fields: each bad value names its field."""

import sys

from configs import rag_r1
from rag_r1_jax import config_validation
from tests.training import fake_wandb


def _problems(config) -> list[str]:
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    return str(e).splitlines()[1:]
  return []


def test_bad_validation_and_logging_fields_are_named():
  config = rag_r1.get_config("smoke")
  assert _problems(config) == []
  config.rl.eval_every = -1
  config.rl.eval_questions = -2
  config.logging.console_every = 0
  assert [p.strip() for p in _problems(config)] == [
      "config.logging.console_every=0: must be positive",
      "config.rl.eval_every=-1: must be >= 0",
      "config.rl.eval_questions=-2: must be >= 0"]


def test_wandb_enabled_needs_the_package_and_a_project(monkeypatch):
  config = rag_r1.get_config("smoke")
  config.logging.wandb.enabled = True
  config.logging.wandb.project = ""
  monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
  assert [p.strip() for p in _problems(config)] == [
      "config.logging.wandb.project='': is required when config.logging.wandb.enabled",
      "config.logging.wandb.enabled=True: needs the wandb package (`pip install wandb`), or "
      "set it to False"]
  fake_wandb.install(monkeypatch)
  config.logging.wandb.project = "rag_r1_jax"
  assert _problems(config) == []
