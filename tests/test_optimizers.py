"""The run's optimizer: torch's fused kernel by default where it has one, the config's choice kept."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.errors import ConfigError
from alignkit.loop import Trainer
from alignkit.optimizers import build_optimizer, fused_supported, takes_fused


def _params(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 24), (24,), (7, 3, 5)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype).to(device))
            for s in shapes]


def _build(**options) -> torch.optim.Optimizer:
    return build_optimizer(OmegaConf.create(options), _params())


def test_adamw_from_the_config_runs_fused_on_cpu():
    optimizer = _build(_target_="torch.optim.AdamW", lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["fused"] is True


@pytest.mark.parametrize("options", [{"fused": False}, {"foreach": True}, {"foreach": False}])
def test_an_implementation_set_in_the_config_is_kept(options):
    group = _build(_target_="torch.optim.AdamW", lr=1e-3, **options).param_groups[0]
    assert not group["fused"]
    for key, value in options.items():
        assert group[key] is value


def test_an_optimizer_without_a_fused_kernel_builds_as_configured():
    assert not takes_fused(torch.optim.RMSprop)
    optimizer = _build(_target_="torch.optim.RMSprop", lr=1e-3)
    assert isinstance(optimizer, torch.optim.RMSprop) and "fused" not in optimizer.param_groups[0]


def test_parameters_the_fused_kernels_do_not_take_get_the_default():
    assert fused_supported(_params()) and fused_supported(_params(dtype=torch.float64))
    meta = _params(device="meta")  # no fused kernels on the meta device
    assert not fused_supported(meta) and not fused_supported([])
    optimizer = build_optimizer(OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": 1e-3}), meta)
    assert not optimizer.param_groups[0]["fused"]


def test_a_bad_target_or_argument_is_one_line():
    with pytest.raises(ConfigError, match=r"trainer.optimizer: cannot build torch.optim.Nope"):
        _build(_target_="torch.optim.Nope", lr=1e-3)
    with pytest.raises(ConfigError, match=r"cannot build torch.optim.AdamW: .*nonsense"):
        _build(_target_="torch.optim.AdamW", lr=1e-3, nonsense=1)


def test_the_fused_adamw_step_is_the_adamw_update_by_hand():
    """Loshchilov & Hutter 2019, Algorithm 2, in float64: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
    w <- w (1 - lr wd) - lr m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)."""
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    params = _params()
    optimizer = build_optimizer(OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": lr, "betas": [b1, b2],
                                                  "eps": eps, "weight_decay": wd}), params)
    assert optimizer.param_groups[0]["fused"] is True
    weights = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(w) for w in weights]
    v = [torch.zeros_like(w) for w in weights]
    generator = torch.Generator().manual_seed(1)
    for t in range(1, 6):
        grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.float()
        optimizer.step()
        for i, g in enumerate(grads):
            g = g.float().double()  # the gradient the optimizer saw
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            weights[i] = weights[i] * (1 - lr * wd) - lr * (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
    for p, w in zip(params, weights):
        torch.testing.assert_close(p.detach().double(), w, atol=1e-6, rtol=0)


def test_a_run_trains_with_the_fused_optimizer_and_the_override_turns_it_off(alignkit_compose, tmp_path):
    fused = Trainer(alignkit_compose("trainer.max_steps=1"), tmp_path / "fused")
    assert fused.run.optimizer.param_groups[0]["fused"] is True
    plain = Trainer(alignkit_compose("trainer.max_steps=1", "+trainer.optimizer.fused=false"), tmp_path / "plain")
    assert plain.run.optimizer.param_groups[0]["fused"] is False
