"""Log-probs at the sampling temperature: the sampler and the trainer score the same tokens alike.

Rollouts of a random tiny model drawn at temperature 1.3 (top_p 0.95); the update's
`logprob_mismatch` (sampler log-probs vs the trainer's forward pass, over generated tokens)
is float32 noise, on the one-update path and on the scored (several updates) path. Scoring at
temperature 1 instead, as the trainer did before, is far off.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.rl import step as rl_step
from tests.sampling.toy import toy_tokenizer
from tests.training import test_update_common as h

ROWS, PROMPT, NEW, CAPACITY = 8, 5, 12, 32


@functools.lru_cache(maxsize=None)
def _rollout(temperature: float) -> dict:
  """Rows sampled from the seed-3 tiny model: the rollout batch rl_update takes."""
  model = h.model(h.mesh(), seed=3)
  sampler = sampler_lib.Sampler(model, toy_tokenizer(), capacity=CAPACITY,
                                stop_strings_=("~",))  # "~" is outside the 64 tokens
  rng = np.random.default_rng(0)
  state = sampler.init(ROWS, jax.random.key(1))
  state = sampler.append(state, [list(p) for p in rng.integers(1, 64, (ROWS, PROMPT))])
  sampling = SamplingParams(temperature=temperature, top_p=0.95)
  state = sampler.decode(state, sampler_lib.DecodeSettings(sampling, max_turn_tokens=NEW))
  lengths = np.asarray(state.lengths)
  real = np.arange(CAPACITY)[None] < lengths[:, None]
  generated = np.asarray(state.generated) & real
  return {"tokens": np.where(real, np.asarray(state.tokens), 0).astype(np.int32),
          "positions": np.broadcast_to(np.arange(CAPACITY, dtype=np.int32), real.shape).copy(),
          "attention_mask": real.astype(np.int32), "loss_mask": generated.astype(np.float32),
          "sampler_logprobs": np.where(generated, np.asarray(state.logprobs), 0.0),
          "rewards": rng.integers(0, 2, ROWS).astype(np.float32),
          "group_ids": (np.arange(ROWS) // 4).astype(np.int32)}


def _mismatch(batch, temperature, **rl):
  config = h.rl_config(batch_size=2, mini_batch_size=2, kl_coef=0.0, entropy_coef=0.0, **rl)
  config.sampling.temperature = temperature
  hp = rl_step.RLHparams.from_config(config)
  assert hp.temperature == temperature
  state = train_state.create_rl_state(h.model(h.mesh(), seed=3), config)
  _, metrics = rl_trainer.rl_update(state, batch, config, hp)
  return metrics["logprob_mismatch"]


@pytest.mark.parametrize("epochs", [1, 2])  # 1: the one-update path; 2: scored old log-probs
def test_logprob_mismatch_is_zero_at_temperature_1_3(epochs):
  batch = _rollout(1.3)
  assert batch["loss_mask"].sum() == ROWS * NEW
  assert _mismatch(batch, 1.3, epochs_per_batch=epochs) < 1e-6  # measured 6e-8
  # The same tokens scored at temperature 1 (the sampler drew them at 1.3): far off.
  assert _mismatch(batch, 1.0, epochs_per_batch=epochs) > 0.01  # measured 0.0176


def test_temperature_one_and_greedy_rollouts_score_at_one():
  assert _mismatch(_rollout(1.0), 1.0) < 1e-6
  config = h.rl_config()
  config.sampling.temperature, config.sampling.greedy = 1.3, True
  assert rl_step.RLHparams.from_config(config).temperature == 1.0
  assert dataclasses.replace(rl_step.RLHparams.from_config(h.rl_config()), temperature=1.0) == \
      rl_step.RLHparams.from_config(h.rl_config())
