"""The KL coefficient controller: fixed, and adaptive with veRL's update rule, by hand."""

import pytest

from rag_r1_jax.rl import kl_control


def test_fixed_keeps_the_coefficient():
  assert kl_control.next_kl_coef(0.001, 5.0, 512, kind="fixed", target=0.1,
                                 horizon=10000) == 0.001


@pytest.mark.parametrize("current_kl,expected", [
    (0.2, 0.001 * (1 + 0.2 * 512 / 10000)),  # error 1.0, clipped to 0.2: 0.00101024
    (0.11, 0.001 * (1 + 0.1 * 512 / 10000)),  # error 0.1, inside the clip
    (0.05, 0.001 * (1 - 0.2 * 512 / 10000)),  # error -0.5, clipped to -0.2: 0.00098976
    (0.1, 0.001),  # on target
    (0.0, 0.001 * (1 - 0.2 * 512 / 10000)),  # no KL at all
])
def test_adaptive_moves_towards_the_target(current_kl, expected):
  got = kl_control.next_kl_coef(0.001, current_kl, 512, kind="adaptive", target=0.1,
                                horizon=10000)
  assert got == pytest.approx(expected, rel=1e-12)


def test_adaptive_one_row_and_bad_kind():
  # One row of a 1-step horizon: the full +-20% per step.
  assert kl_control.next_kl_coef(1.0, 9.0, 1, kind="adaptive", target=1.0,
                                 horizon=1) == pytest.approx(1.2)
  with pytest.raises(ValueError, match="rl.kl_ctrl"):
    kl_control.next_kl_coef(1.0, 1.0, 1, kind="pid", target=1.0, horizon=1)
