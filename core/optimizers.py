"""The run's optimizer: ``trainer.optimizer`` instantiated, on torch's fused kernel where it has one.

torch's Adam, AdamW, SGD and Adagrad take ``fused=True``: one kernel per parameter tensor that reads
the weight, its gradient and the optimizer state once and writes them once, instead of a chain of
element-wise ops per tensor (torch's default on CPU is that chain in a Python loop). The update is the
same to float rounding (AdamW, 16 steps on SmolLM2-135M's fp32 weights: 3e-8 apart), and on these
2-core CPUs its AdamW step takes 0.07 s instead of 0.43 s (6.2x; ``python benchmarks/optimizer_step.py``
times torch's three implementations side by side). transformers' ``Trainer`` defaults to fused AdamW
on torch >= 2.8 for the same reason.

So when the config sets neither ``fused`` nor ``foreach``, an optimizer whose constructor takes
``fused`` gets ``fused=True`` if every parameter is a floating-point tensor on a device torch has the
fused kernels for; otherwise torch's default runs. ``trainer.optimizer.fused=false`` keeps the unfused
implementation.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from omegaconf import DictConfig

from .errors import ConfigError

#: Constructor keywords that choose an implementation; a config that sets either keeps its choice.
IMPLEMENTATION_KEYS = ("fused", "foreach")


def fused_supported(params: list[torch.Tensor]) -> bool:
    """True when torch's fused optimizer kernels accept every tensor in ``params`` (dtype and device).

    The device list is torch's own (a private helper, the one its optimizers check); a torch without it
    gets False, so the run keeps torch's default implementation (tests/test_optimizers.py then fails loudly).
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    devices = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(torch.is_floating_point(p) and p.device.type in devices for p in params)


def takes_fused(cls: Any) -> bool:
    """True when the optimizer class ``cls`` has a ``fused`` constructor argument."""
    try:
        return "fused" in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return False


def build_optimizer(options: DictConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``options`` (``trainer.optimizer``: ``_target_`` + keyword arguments) built over ``params``.

    Raises:
        ConfigError: the target cannot be imported or rejects the arguments (one line).
    """
    from hydra.utils import instantiate

    target = options.get("_target_")
    try:
        factory = instantiate(options, _partial_=True)  # functools.partial(the class, **the options)
        extra: dict[str, Any] = {}
        if not any(key in options for key in IMPLEMENTATION_KEYS) and takes_fused(factory.func) \
                and fused_supported(params):
            extra["fused"] = True
        return factory(params=params, **extra)
    except Exception as exc:  # noqa: BLE001 - an import error (wrapped by Hydra) or the constructor's own
        cause = exc.__cause__ or exc
        raise ConfigError(f"trainer.optimizer: cannot build {target}: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}") from exc
