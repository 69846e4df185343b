"""The run's plots: three valid PNGs of the expected size, drawn from the run's data."""

import os

import numpy as np
from matplotlib import image

from rag_r1_jax.eval import plots, summarize
from tests.eval import synthetic_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scored(records):
  scored = [summarize.score_record(r) for r in records]
  return scored, {"run": "t", **summarize.summarize(scored)}


def test_write_run_draws_three_valid_pngs(tmp_path):
  records = synthetic_records.random_records(1, ("nq", "hotpotqa"), per_dataset=10)
  summarize.write_run(records, str(tmp_path), run_name="sq")
  out = tmp_path / "plots"
  assert sorted(os.listdir(out)) == sorted(
      [plots.EM_PLOT, plots.ROUNDS_PLOT, plots.SECONDS_PLOT])
  for name in os.listdir(out):
    with open(out / name, "rb") as f:
      assert f.read(8) == PNG_SIGNATURE
    pixels = image.imread(out / name)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels[..., :3].std() > 0.01  # something was drawn
  # Bar plots are (1.2 * columns + 2) x 3.5 inches at 100 dpi; 2 datasets + avg.
  assert image.imread(out / plots.EM_PLOT).shape[:2] == (350, 560)
  assert image.imread(out / plots.ROUNDS_PLOT).shape[:2] == (350, 600)


def test_plots_depend_on_the_numbers(tmp_path):
  scored, summary = _scored(synthetic_records.hand_records())
  a = plots.plot_em_by_dataset(summary, str(tmp_path / "a.png"))
  summary["datasets"]["hotpotqa"]["em"] = 0.9
  b = plots.plot_em_by_dataset(summary, str(tmp_path / "b.png"))
  assert not np.array_equal(image.imread(a), image.imread(b))
  paths = plots.write_plots(scored, summary, str(tmp_path / "all"))
  assert [os.path.basename(p) for p in paths] == [
      plots.EM_PLOT, plots.ROUNDS_PLOT, plots.SECONDS_PLOT]
  assert all(os.path.getsize(p) > 1000 for p in paths)
