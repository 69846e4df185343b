"""A stand-in for the `wandb` package that records what it is given (wandb is not installed)."""

import sys
import types


class FakeRun:
  def __init__(self, **init_kwargs):
    self.init_kwargs = init_kwargs
    self.defined: list[tuple[str, str | None]] = []
    self.logged: list[dict] = []
    self.finished = False

  def define_metric(self, name, step_metric=None):
    self.defined.append((name, step_metric))

  def log(self, data):
    self.logged.append(dict(data))

  def finish(self):
    self.finished = True


def install(monkeypatch) -> types.ModuleType:
  """Puts a fake `wandb` module in sys.modules; its `runs` lists every FakeRun init made."""
  module = types.ModuleType("wandb")
  module.runs = []

  def init(**kwargs):
    module.runs.append(FakeRun(**kwargs))
    return module.runs[-1]

  module.init = init
  monkeypatch.setitem(sys.modules, "wandb", module)
  return module
