"""Per-data_source means of per-row values."""

import numpy as np
import pytest

from rag_r1_jax.data import sources


def test_per_source_means():
  got = sources.per_source_means(["nq", "hq", "nq", "hq", "nq"], em=[1, 0, 0, 1, 1],
                                 reward=np.array([1.0, 0.5, 0.0, 0.5, 0.5]))
  assert got == {"em/nq": pytest.approx(2 / 3), "em/hq": 0.5,
                 "reward/nq": 0.5, "reward/hq": 0.5}
  assert sources.per_source_means(["nq", "nq"], em=[1, 0]) == {}
  with pytest.raises(ValueError, match="em: 1 values for 2 rows"):
    sources.per_source_means(["a", "b"], em=[1])
