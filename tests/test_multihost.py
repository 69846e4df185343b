"""Multi-process runs: 2 processes x 2 CPU devices give one process x 4 devices' results.

The multi-process check launches child processes of this file (`python -m tests.test_multihost
--child ...`), each with its own fake CPU devices, joined through a coordinator on 127.0.0.1.
Each runs one GRPO update (with a reference model), an orbax checkpoint round trip, an HF
export, one SFT step and a multi-turn search rollout on a (data=1, fsdp=2, tensor=2) mesh, so
parameters and batch rows are split across the processes, and writes the values it fetched
back to the host.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rag_r1_jax import multihost
from rag_r1_jax.models import hf_checkpoint, safetensors_io
from rag_r1_jax.rollout import engine as engine_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from rag_r1_jax.training import checkpoints, train_state
from rag_r1_jax.training.rl import trainer as rl_trainer
from rag_r1_jax.training.sft import data as sft_data
from rag_r1_jax.training.sft import step as sft_step
from tests.rollout import test_engine
from tests.sampling import toy
from tests.training import test_update_common as h

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = (1, 2, 2)  # data, fsdp, tensor: fsdp spans the two processes, tensor stays inside one
ROWS, SEQ = 16, 24
CHILD_TIMEOUT_S = 240


def _compute(mesh, workdir: str) -> dict[str, np.ndarray]:
  """One GRPO update, a checkpoint round trip, an export and one SFT step: host values."""
  config = h.rl_config(algorithm="grpo", kl_coef=0.05, entropy_coef=0.01)
  state = train_state.create_rl_state(h.model(mesh, seed=3), config)
  batch = h.trajectory_batch(ROWS, SEQ, h.TINY.vocab_size, seed=4)
  state, metrics = rl_trainer.rl_update(state, batch, config)
  out = {f"rl_{k}": np.float64(metrics[k]) for k in ("loss", "grad_norm", "kl", "entropy")}
  params = multihost.fetch(jax.tree.leaves(state.params))
  out.update({f"rl_param_{i}": p for i, p in enumerate(params)})

  manager = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"))
  manager.save(1, state, {"step": 1})
  restored, meta = manager.restore(train_state.abstract(state))
  manager.close()
  same = [np.array_equal(a, b) for a, b in zip(multihost.fetch(jax.tree.leaves(restored.params)),
                                                params)]
  out["restored_equal"] = np.bool_(all(same) and meta == {"step": 1})
  hf_checkpoint.export_hf(state.model(), os.path.join(workdir, "model"))
  multihost.barrier("export")

  rng = np.random.default_rng(5)
  examples = []
  for length in rng.integers(8, 40, 16):
    mask = (np.arange(length) >= length // 3).astype(np.float32)
    examples.append(sft_data.SFTExample(rng.integers(1, h.TINY.vocab_size, length).astype(np.int32),
                                        mask))
  sft_state = train_state.create_sft_state(state.model(), config, total_steps=4)
  hp = sft_step.SFTHparams.from_config(config, 4)
  sft_state, rows = sft_step.sft_epoch(sft_state, examples, hp, epoch=0)
  out["sft_loss"] = np.float64(rows[0]["loss"])
  params = multihost.fetch(jax.tree.leaves(sft_state.params))
  out.update({f"sft_param_{i}": p for i, p in enumerate(params)})
  return out


def _rollout(mesh) -> dict[str, np.ndarray]:
  """A greedy rollout of the scripted toy decoder, its rows split over the processes; also
  which rows this process parsed and how many queries it sent (`local_` keys)."""
  tokenizer = toy.toy_tokenizer()
  model = toy.bigram_model(tokenizer, test_engine.SUCCESSOR, default="<search>", mesh=mesh)
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=256, mesh=mesh,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(toy.EOS)])
  settings = engine_lib.RolloutSettings(max_turns=2, max_turn_tokens=12, max_obs_length=40,
                                        topk=2)
  retriever = test_engine.CountingRetriever(test_engine.DOCS)
  engine = engine_lib.RolloutEngine(sampler, tokenizer, retriever, settings)
  # Rows 0-3 search, rows 4-7 answer: with the rows split over fsdp, only process 0 has
  # queries to send.
  prompts = ["hello Q:", "why Q:", "x A:", "a much longer prompt A:"]
  out = engine.run(prompts, sampling=SamplingParams(greedy=True), group_size=2)
  records = [{k: v for k, v in r.to_dict().items() if not k.endswith("seconds")}
             for r in out.records]
  result = {f"rollout_{k}": v for k, v in out.tensors().items()}
  result["rollout_records"] = np.frombuffer(json.dumps(records).encode(), np.uint8)
  rows = multihost.put(np.zeros(8), NamedSharding(mesh, P(("data", "fsdp"))))
  result["local_rows"] = multihost.local_rows(rows)
  result["local_queries"] = np.int64(sum(len(b) for b in retriever.batches))
  return result


def _child(args) -> None:
  multihost.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  mesh = h.mesh(*MESH)
  assert mesh.devices.size == 4 and len(jax.local_devices()) == 4 // args.num_processes
  out = _compute(mesh, args.workdir) | _rollout(mesh)
  np.savez(os.path.join(args.workdir, f"result_{jax.process_index()}.npz"), **out)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: str, num_processes: int) -> list[subprocess.Popen]:
  """`num_processes` children sharing `workdir` (their logs: log_<id>.txt), 4 CPU devices in all."""
  port = _free_port()
  os.makedirs(workdir, exist_ok=True)
  procs = []
  for pid in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // num_processes}")
    log = open(os.path.join(workdir, f"log_{pid}.txt"), "w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.test_multihost", "--child", f"--port={port}",
         f"--num_processes={num_processes}", f"--process_id={pid}", f"--workdir={workdir}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _results(workdir: str, num_processes: int) -> list[dict[str, np.ndarray]]:
  return [dict(np.load(os.path.join(workdir, f"result_{i}.npz"))) for i in range(num_processes)]


def _assert_close(got: dict, want: dict, atol: float) -> None:
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key].shape == want[key].shape, key
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  two, one = str(tmp_path / "2x2"), str(tmp_path / "1x4")
  procs = _launch(two, 2)
  try:  # meanwhile the reference: this process's first 4 devices
    reference = _compute(h.mesh(*MESH), one) | _rollout(h.mesh(*MESH))
    for proc in procs:
      proc.wait(timeout=CHILD_TIMEOUT_S)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  logs = [open(os.path.join(two, f"log_{i}.txt")).read()[-3000:] for i in range(2)]
  assert all(p.returncode == 0 for p in procs), logs
  first, second = _results(two, 2)
  # Each process parsed and retrieved for its own half of the rollout's rows only.
  np.testing.assert_array_equal(first.pop("local_rows"), np.arange(4))
  np.testing.assert_array_equal(second.pop("local_rows"), np.arange(4, 8))
  # Two turns of ["alpha", "beta"] (deduplicated over rows 0-3), all from process 0.
  assert (first.pop("local_queries"), second.pop("local_queries")) == (4, 0)
  assert reference.pop("local_queries") == 4
  np.testing.assert_array_equal(reference.pop("local_rows"), np.arange(8))
  _assert_close(second, first, atol=0)  # every process fetched the same global values
  assert first["restored_equal"] and reference["restored_equal"]
  assert first["rl_grad_norm"] > 0.1 and first["sft_loss"] > 1  # real updates, not no-ops
  # Every cross-device sum here has two operands (batch rows over fsdp, partial products over
  # tensor), which gloo and XLA's in-process collectives add alike; 4-way sums (data=4) can
  # round apart in float32, gloo adding in another order.
  _assert_close(first, reference, atol=1e-5)
  exported = safetensors_io.SafetensorsFile(os.path.join(two, "model", "model.safetensors"))
  expected = safetensors_io.SafetensorsFile(os.path.join(one, "model", "model.safetensors"))
  assert sorted(exported.keys()) == sorted(expected.keys())
  for name in expected.keys():
    np.testing.assert_allclose(exported.get(name), expected.get(name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_processes=2), "--coordinator_address is required with --num_processes"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2), "--process_id is required"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2),
     "--process_id=2 must be in [0, --num_processes=2)"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1),
     "--process_id=-1 must be in"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0),
     "--num_processes=0 must be >= 1"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(local_device_ids=[0]), "--local_device_ids applies to a multi-process run"),
])
def test_bad_flags_name_the_flag(kwargs, message):
  with pytest.raises(ValueError) as e:
    multihost.initialize(**kwargs)
  assert message in str(e.value)


def test_no_flags_stay_one_process():
  multihost.initialize()
  assert jax.process_count() == 1 and multihost.is_primary()
  multihost.barrier("alone")  # returns at once
  multihost.check_same({"x": np.arange(3)}, "x")


def test_put_and_fetch_round_trip_rows_scalars_and_keys():
  mesh = h.mesh(8)
  rows = np.arange(32, dtype=np.float32).reshape(16, 2)
  by_row = NamedSharding(mesh, P("data"))
  tree = multihost.put({"rows": rows, "step": np.int32(7)},
                       {"rows": by_row, "step": NamedSharding(mesh, P())})
  assert tree["rows"].sharding == by_row and tree["rows"].addressable_shards[1].data.shape == (2, 2)
  back = multihost.fetch(tree)
  np.testing.assert_array_equal(back["rows"], rows)
  assert back["step"] == 7
  key = multihost.put(jax.random.key(3), NamedSharding(mesh, P()))
  assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.sharding.is_fully_replicated
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", action="store_true")
  parser.add_argument("--port", type=int)
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--workdir")
  _child(parser.parse_args())
