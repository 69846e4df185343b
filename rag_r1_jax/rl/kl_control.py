"""The KL coefficient of PPO's reward penalty: fixed, or adaptive (Ziegler et al., 2019).

Host-side and pure: the RL loop keeps the coefficient between steps (and in its checkpoints)
and passes it to the update, which subtracts coefficient x KL from the token rewards. The
adaptive controller moves the coefficient towards the value that holds the measured KL at
`rl.kl_target`: each step multiplies it by 1 + clip(kl / target - 1, -0.2, 0.2) x n / horizon,
n the rollout rows of the step, as veRL's AdaptiveKLController (algorithm.kl_ctrl).
"""

import numpy as np

KL_CONTROLLERS = ("fixed", "adaptive")


def next_kl_coef(coef: float, current_kl: float, rows: int, *, kind: str, target: float,
                 horizon: int) -> float:
  """The coefficient for the next step after a step of `rows` rows measured `current_kl`.

  current_kl: the batch mean over sequences of each sequence's mean per-token KL (the reward's
  estimator), the statistic veRL feeds its controller. 'fixed' returns coef unchanged.
  """
  if kind == "fixed":
    return coef
  if kind != "adaptive":
    raise ValueError(f"rl.kl_ctrl={kind!r} must be one of {KL_CONTROLLERS}")
  error = float(np.clip(current_kl / target - 1.0, -0.2, 0.2))
  return coef * (1.0 + error * rows / horizon)
