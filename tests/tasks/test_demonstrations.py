"""Demonstration segments: the paper's sub-sample cut and a direct answer."""

from rag_r1_jax.tasks import demonstrations
from rag_r1_jax.tasks.demonstrations import Segment


def test_cut_subsamples():
  segs = [Segment("p1", "policy"), Segment("i1", "information"), Segment("p2", "policy"),
          Segment("i2", "information"), Segment("p3", "policy")]
  cuts = demonstrations.cut_subsamples(segs)
  assert cuts == [([], segs[0]), (segs[:2], segs[2]), (segs[:4], segs[4])]
  assert demonstrations.cut_subsamples([]) == []


def test_direct_answer():
  segs = demonstrations.direct_answer("Paris")
  assert segs == [Segment("<think> I know this </think><answer> Paris </answer>", "policy")]
  assert demonstrations.cut_subsamples(segs) == [([], segs[0])]
