"""The third-party estimator and loss: pinned by hand, selectable by name, and method=grpo with them passes
alignkit's conformance kit (accumulation, resume, dropout, ...)."""

from __future__ import annotations

import math

import pytest
import torch
from alignkit_rl_extras.math import median_advantages, vanilla_pg

from alignkit.testing import check_method


def test_median_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 10.0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0], [4.0, 0.0, 2.0]])
    assert median_advantages(rewards).tolist() == [[0.0, -1.0, 9.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 0.0],
                                                   [2.0, -2.0, 0.0]]
    even = torch.tensor([[1.0, 2.0, 3.0, 10.0]])  # median (2 + 3) / 2
    assert median_advantages(even).tolist() == [[-1.5, -0.5, 0.5, 7.5]]
    with pytest.raises(ValueError, match="k >= 2"):
        median_advantages(torch.ones(2, 1))


def test_vanilla_pg_by_hand():
    logps = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.8), 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = vanilla_pg(logps, logps.detach(), adv, mask)
    expected = (-2 * math.log(0.5) - 2 * math.log(0.25) + math.log(0.8)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6) and stats["ratio_mean"].item() == 1.0
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-2 / 3, -2 / 3], [1 / 3, 0.0]]))


def test_they_are_registered_and_selectable():
    from alignkit.plugin_manager import get_registry

    registry = get_registry()
    assert registry.get("advantages", "median").fn is median_advantages
    assert registry.get("losses", "vanilla_pg").family == "policy"
    from alignkit.losses import vanilla_pg as registered

    assert registered is vanilla_pg


def test_grpo_with_the_plugins_estimator_and_loss_conforms(tmp_path):
    report = check_method("grpo", "method.advantage=median", "loss=vanilla_pg", tmp_path=tmp_path)
    assert "accumulates" in report["checks"] and "resumes" in report["checks"]
