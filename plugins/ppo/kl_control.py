"""The KL coefficient β of the per-token penalty: fixed, or adapted towards a target KL."""

from __future__ import annotations

from typing import Any, Optional


class KLController:
    """β, fixed or adaptive (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, §2.2).

    Adaptive, after each rollout with observed KL (sequence sum, mean over rows) and n rows::

        e = clip(KL / KL_target − 1, −0.2, 0.2)
        β ← β · (1 + e · n / horizon)

    Args:
        coef: initial β.
        target: KL target; None keeps β fixed.
        horizon: rows over which β may change by e (10,000 in the paper).
    """

    def __init__(self, coef: float, target: Optional[float] = None, horizon: int = 10_000) -> None:
        self.value, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
