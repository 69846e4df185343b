"""SFT update: the loss decreases on a tiny dataset; masked targets contribute nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from rag_r1_jax.training import train_state
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.sft import step as sft_step
from tests.char_tokenizer import char_tokenizer
from tests.training import test_update_common as h
from tests.training.sft.test_data import OUTPUT

CFG = h.TINY.replace(vocab_size=128)


def _config(**sft):
  c = common.base_config()
  c.sft.update(dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, schedule="constant",
                    epochs=1))
  c.sft.update(sft)
  return c


def _examples():
  tok = char_tokenizer()
  rows = [{"instruction": f"Where does person {i} live?", "input": "", "system": "",
           "output": OUTPUT.replace("Oslo", city)}
          for i, city in enumerate(["Oslo", "Rome", "Kyiv", "Lima", "Bern", "Oslo"])]
  return [sft_data.encode_alpaca_row(tok, r) for r in rows]


def test_sft_loss_decreases_and_validation_loss_follows():
  examples = _examples()
  config = _config()
  epochs = 12
  total = epochs * sft_data.steps_per_epoch(len(examples), config.sft.batch_size)
  hp = sft_step.SFTHparams.from_config(config, total)
  state = train_state.create_sft_state(h.model(h.mesh(2, 1, 1), CFG), config, total)
  before = sft_step.sft_validation_loss(state, examples, hp)
  assert before == pytest.approx(np.log(CFG.vocab_size), abs=0.1)
  losses = []
  for epoch in range(epochs):
    state, rows = sft_step.sft_epoch(state, examples, hp, epoch)
    assert len(rows) == 2 and all(r["skipped"] == 0 for r in rows)
    losses += [r["loss"] for r in rows]
  after = sft_step.sft_validation_loss(state, examples, hp)
  assert int(state.step) == total == len(losses)
  assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
  assert after < 0.5 * before


def test_only_masked_in_tokens_count():
  ex = _examples()[0]
  batch = sft_data.pad_batch([ex], rows=2, multiple=64)
  model = h.model(h.mesh(), CFG)
  graphdef, params = nnx.split(model)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  loss_fn = jax.jit(sft_step.sft_loss, static_argnums=2)
  loss, aux = loss_fn(params, jb, graphdef)
  logits, _ = model(jb["tokens"], positions=jb["positions"], attention_mask=jb["attention_mask"])
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  picks = [-logp[0, t - 1, batch["tokens"][0, t]] for t in range(1, len(ex))
           if batch["loss_mask"][0, t] == 1]
  assert float(aux["tokens"]) == len(picks) == ex.loss_mask.sum()
  assert float(loss) == pytest.approx(np.mean(picks), rel=1e-5)
  # Tokens after the last target (padding and the empty row) change nothing, bit for bit.
  changed = dict(batch)
  changed["tokens"] = batch["tokens"].copy()
  changed["tokens"][0, len(ex):] = 7
  changed["tokens"][1] = 9
  loss2, _ = loss_fn(params, {k: jnp.asarray(v) for k, v in changed.items()}, graphdef)
  assert float(loss2) == float(loss)
  # Masking a target out removes exactly its term.
  last = int(np.flatnonzero(batch["loss_mask"][0])[-1])
  fewer = dict(batch, loss_mask=batch["loss_mask"].copy())
  fewer["loss_mask"][0, last] = 0
  loss3, _ = loss_fn(params, {k: jnp.asarray(v) for k, v in fewer.items()}, graphdef)
  expected = (np.sum(picks) + logp[0, last - 1, batch["tokens"][0, last]]) / (len(picks) - 1)
  assert float(loss3) == pytest.approx(expected, rel=1e-5)


def test_packed_rows_give_the_padded_batch_loss():
  """Examples packed into shared rows score exactly as when each has a padded row of its own:
  positions restart per example and no example attends to another."""
  examples = _examples()
  model = h.model(h.mesh(), CFG)
  graphdef, params = nnx.split(model)
  sums = jax.jit(sft_step.nll_sums, static_argnums=2)
  padded = sft_data.pad_batch(examples, rows=len(examples), multiple=64)
  width = 2 * max(len(e) for e in examples) + 8
  plan = sft_data.pack_plan([len(e) for e in examples], rows=3, width=width, seed=0, epoch=0)
  assert len(plan) == 1 and max(len(r) for r in plan[0]) >= 2  # rows really are shared
  packed = sft_data.pack_batch(examples, plan[0], width)
  total_p, count_p = sums(params, {k: jnp.asarray(v) for k, v in padded.items()}, graphdef)
  total_k, count_k = sums(params, {k: jnp.asarray(v) for k, v in packed.items()}, graphdef)
  assert float(count_k) == float(count_p) > 0
  np.testing.assert_allclose(float(total_k), float(total_p), rtol=1e-5)
  # Without the segment ids the second example of a row would read the first one.
  mixed = dict(packed, attention_mask=(packed["attention_mask"] > 0).astype(np.int32))
  total_m, _ = sums(params, {k: jnp.asarray(v) for k, v in mixed.items()}, graphdef)
  assert abs(float(total_m) - float(total_p)) > 1e-3
