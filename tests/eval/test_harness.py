"""The evaluation harness on a scripted decoder: records, files, recomputed EM, loaders."""

import json
import os

import pytest

from configs.common import base_config
from rag_r1_jax import tasks
from tests.data.test_qa_builders import write_jsonl
from rag_r1_jax.eval import answer_metrics, harness, plots, summarize
from rag_r1_jax.retrieval.base import Document, ExactRetriever
from rag_r1_jax.rollout import engine as engine_lib
from rag_r1_jax.sampling import sampler as sampler_lib
from rag_r1_jax.sampling.sampling_fns import SamplingParams
from tests.sampling.toy import EOS, bigram_model, toy_tokenizer

# A question ending in Q: searches "alpha,beta" every turn; A: answers "paris"; B: babbles.
SUCCESSOR = {"Q:": "<search>", "<search>": "alpha", "alpha": ",", ",": "beta",
             "beta": "</search>", "A:": "<answer>", "<answer>": "paris", "paris": "</answer>",
             "B:": "b", "b": "b"}
DOCS = [Document("d1", "Alpha", "alpha is a letter"), Document("d2", "Beta", "beta follows alpha"),
        Document("d3", "Paris", "paris is a city")]
# The prompt ends "Question: <q>?\n"; dropping "?\n" leaves the question's last token last,
# so the scripted model's behaviour is chosen per question.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] | replace('?\n', '') }}{% endfor %}"
DATASETS = {
    "nq": [{"id": "n0", "question": "who A:", "golden_answers": ["Paris"]},
           {"id": "n1", "question": "what A:", "golden_answers": ["London", "Rome"]},
           {"id": "n2", "question": "where Q:", "golden_answers": ["alpha"]}],
    "hotpotqa": [{"id": "h0", "question": "x B:", "golden_answers": ["b"]},
                 {"id": "h1", "question": "which A:", "golden_answers": ["x", "the paris"]}],
    "popqa": [],
}
# Per question: (answer, searches, finish_reason) as the script dictates (max_turns=2).
EXPECTED = {"n0": ("paris", 0, "answer"), "n1": ("paris", 0, "answer"),
            "n2": (None, 2, "max_turns"), "h0": (None, 2, "max_turns"),
            "h1": ("paris", 0, "answer")}
TIMING = ("decode_seconds", "retrieval_seconds", "total_seconds")


class SpyEngine(engine_lib.RolloutEngine):
  """Records the arguments of every run call."""

  def __init__(self, *args):
    super().__init__(*args)
    self.calls = []

  def run(self, prompts, **kwargs):
    self.calls.append((len(prompts), kwargs["batch_size"], kwargs["seed"]))
    return super().run(prompts, **kwargs)


@pytest.fixture(scope="module")
def toy():
  tokenizer = toy_tokenizer()
  tokenizer.chat_template = CHAT_TEMPLATE
  model = bigram_model(tokenizer, SUCCESSOR, default="<search>")
  sampler = sampler_lib.Sampler(model, tokenizer, capacity=1024,
                                eos_token_ids=[tokenizer.convert_tokens_to_ids(EOS)])
  settings = engine_lib.RolloutSettings(mode="mq", max_turns=2, max_queries_per_call=3,
                                        max_turn_tokens=12, max_obs_length=40, topk=2)
  return tokenizer, SpyEngine(sampler, tokenizer, ExactRetriever(DOCS), settings)


@pytest.fixture(scope="module")
def greedy_run(toy, tmp_path_factory):
  tokenizer, engine = toy
  out_dir = str(tmp_path_factory.mktemp("greedy"))
  engine.calls.clear()
  summary = harness.evaluate(engine, tokenizer, DATASETS, prompt_variant="short_mq",
                             out_dir=out_dir, run_name="toy", batch_size=2, seed=7,
                             progress=False)
  return out_dir, summary, list(engine.calls)


def _strip_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_records_follow_the_script_one_per_question(greedy_run):
  out_dir, summary, calls = greedy_run
  records = summarize.read_trajectories(out_dir)
  assert [(r["dataset"], r["id"]) for r in records] == [
      ("nq", "n0"), ("nq", "n1"), ("nq", "n2"), ("hotpotqa", "h0"), ("hotpotqa", "h1")]
  for r in records:
    assert (r["answer"], r["turns"], r["finish_reason"]) == EXPECTED[r["id"]]
    row = next(x for x in DATASETS[r["dataset"]] if x["id"] == r["id"])
    assert r["question"] == row["question"] and r["golden_answers"] == row["golden_answers"]
    assert r["queries_per_turn"] == [2] * r["turns"]
    assert r["prompt_tokens"] + r["generated_tokens"] <= r["total_tokens"]
    assert r["total_seconds"] >= r["decode_seconds"] + r["retrieval_seconds"] > 0
  assert "<information>" in records[2]["response_text"]
  # Untimed warm-up: the first batch of each dataset; then each dataset in batches of two
  # that never mix datasets (nq: 2 + 1, hotpotqa: 2); a short batch is padded, not shrunk.
  assert [c[:2] for c in calls] == [(2, 2), (2, 2), (2, 2), (1, 2), (2, 2)]
  assert len({c[2] for c in calls[2:]}) == 3
  assert summary["skipped_datasets"] == ["popqa"] and summary["avg"]["questions"] == 5


def test_summary_matches_recomputation_from_jsonl(greedy_run):
  out_dir, summary, _ = greedy_run
  records = summarize.read_trajectories(out_dir)
  by_dataset = {}
  for r in records:
    by_dataset.setdefault(r["dataset"], []).append(r)
  assert set(summary["datasets"]) == {"nq", "hotpotqa"}
  for name, rows in by_dataset.items():
    got = summary["datasets"][name]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert got["em"] == pytest.approx(
        mean([answer_metrics.exact_match(r["answer"], r["golden_answers"]) for r in rows]))
    assert got["rounds"] == pytest.approx(mean([r["turns"] for r in rows]))
    assert got["seconds"] == pytest.approx(mean([r["total_seconds"] for r in rows]))
    assert got["questions"] == len(rows)
  # By hand: nq 1 of 3 right ("Paris"), hotpotqa 1 of 2 ("the paris"); avg over datasets.
  assert summary["datasets"]["nq"]["em"] == pytest.approx(1 / 3)
  assert summary["datasets"]["hotpotqa"]["em"] == pytest.approx(1 / 2)
  assert summary["avg"]["em"] == pytest.approx((1 / 3 + 1 / 2) / 2)
  assert summary["datasets"]["hotpotqa"]["rounds"] == pytest.approx(1.0)
  with open(os.path.join(out_dir, summarize.SUMMARY_FILE)) as f:
    written = json.load(f)
  assert written == {k: v for k, v in summary.items() if k != "skipped_datasets"}


def test_table_plots_and_printed_em(toy, greedy_run, tmp_path, capsys):
  out_dir, _, _ = greedy_run
  with open(os.path.join(out_dir, summarize.TABLE_FILE)) as f:
    table = f.read()
  assert table.splitlines()[0] == "| toy | NQ | HotpotQA | avg |"  # the paper's column order
  em_row = next(line for line in table.splitlines() if line.startswith("| EM |"))
  assert em_row == "| EM | .333 | .500 | .417 |"
  for name in (plots.EM_PLOT, plots.ROUNDS_PLOT, plots.SECONDS_PLOT):
    with open(os.path.join(out_dir, "plots", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # What is printed: the banner, then the table, then where it was written.
  tokenizer, engine = toy
  harness.evaluate(engine, tokenizer, DATASETS, prompt_variant="short_mq", out_dir=str(tmp_path),
                   run_name="toy", batch_size=2, max_questions=1, progress=True)
  captured = capsys.readouterr()
  assert "eval: 100%" in captured.err and "2/2" in captured.err  # the tqdm bar
  printed = captured.out
  after = printed.split(harness.EM_BANNER + "\n", 1)[1]
  assert after.startswith("| toy | NQ | HotpotQA | avg |")
  assert os.path.join(str(tmp_path), "results.md") in after


def test_max_questions_and_batching_do_not_change_greedy_records(toy, greedy_run, tmp_path):
  tokenizer, engine = toy
  out_dir, _, _ = greedy_run
  engine.calls.clear()
  summary = harness.evaluate(engine, tokenizer, DATASETS, prompt_variant="short_mq",
                             out_dir=str(tmp_path), run_name="cut", batch_size=2,
                             max_questions=1, progress=False)
  # One question per dataset: a warm-up per dataset, then one padded batch per dataset.
  assert [c[:2] for c in engine.calls] == [(1, 2)] * 4
  cut = summarize.read_trajectories(str(tmp_path))
  full = {r["id"]: r for r in summarize.read_trajectories(out_dir)}
  assert [r["id"] for r in cut] == ["n0", "h0"]
  assert summary["avg"]["questions"] == 2
  # The same question gives the same trajectory whatever its batch neighbours.
  assert _strip_timing(cut) == _strip_timing([full["n0"], full["h0"]])


def test_sampling_is_deterministic_given_the_seed(toy, tmp_path):
  tokenizer, engine = toy
  sampling = SamplingParams(temperature=8.0, top_p=0.95)  # the scripted model is very peaked
  rows = {"nq": DATASETS["nq"][:2] + DATASETS["hotpotqa"][1:]}
  texts = []
  for run, seed in (("a", 3), ("b", 3), ("c", 4)):
    harness.evaluate(engine, tokenizer, rows, prompt_variant="short_mq",
                     out_dir=str(tmp_path / run), run_name=run, batch_size=2,
                     sampling=sampling, seed=seed, progress=False)
    texts.append([r["response_text"] for r in summarize.read_trajectories(str(tmp_path / run))])
  assert texts[0] == texts[1]
  assert texts[0] != texts[2]


def test_user_errors_fail_before_any_rollout(toy, tmp_path):
  tokenizer, engine = toy
  engine.calls.clear()
  kwargs = dict(prompt_variant="short_mq", out_dir=str(tmp_path), run_name="x", batch_size=2,
                progress=False)
  with pytest.raises(ValueError, match="every dataset is empty"):
    harness.evaluate(engine, tokenizer, {"nq": [], "popqa": []}, **kwargs)
  long_row = {"id": "long", "question": "w " * 600 + "A:", "golden_answers": ["x"]}
  with pytest.raises(ValueError, match=r"nq question 'long'.*capacity 1024"):
    harness.evaluate(engine, tokenizer, {"nq": [DATASETS["nq"][0], long_row]}, **kwargs)
  with pytest.raises(ValueError, match="dataset 'nq' row 0 has no 'golden_answers'"):
    harness.evaluate(engine, tokenizer, {"nq": [{"id": "a", "question": "q"}]}, **kwargs)
  with pytest.raises(ValueError, match="unknown prompt variant"):
    harness.evaluate(engine, tokenizer, DATASETS, **{**kwargs, "prompt_variant": "nope"})
  assert engine.calls == [] and not os.listdir(tmp_path)


def test_flashrag_loader_reads_test_else_dev(tmp_path):
  data_dir = tmp_path / "flashrag"
  for name, split in (("nq", "test"), ("nq", "dev"), ("hotpotqa", "dev"), ("hotpotqa", "train")):
    os.makedirs(data_dir / name, exist_ok=True)
    rows = [{"id": f"{name}-{split}-{i}", "question": f"q{i}?", "golden_answers": [f"a{i}"]}
            for i in range(2)]
    write_jsonl(data_dir / name / f"{split}.jsonl", rows)
  config = base_config()
  config.data.source = "flashrag"
  config.data.dir = str(data_dir)
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.data.eval_datasets = "nq, hotpotqa"
  datasets = tasks.get(config).eval_datasets()
  assert list(datasets) == ["nq", "hotpotqa"]
  assert [r["id"] for r in datasets["nq"]] == ["nq-test-0", "nq-test-1"]
  assert [r["id"] for r in datasets["hotpotqa"]] == ["hotpotqa-dev-0", "hotpotqa-dev-1"]
  assert datasets["nq"][1] == {"id": "nq-test-1", "question": "q1?", "golden_answers": ["a1"],
                               "data_source": "nq", "extra_info": ""}
  config.data.source = "wiki"
  with pytest.raises(ValueError, match="config.data.source='wiki'"):
    tasks.get(config)
