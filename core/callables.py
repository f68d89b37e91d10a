"""Importing the user code a config names (``module:function``): that one module, nothing else."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .errors import ConfigError


def load_callable(target: str, key: str = "scorer.fn") -> Callable[..., Any]:
    """Import ``module:attr`` (or ``module.attr``); ConfigError naming ``key`` if it cannot."""
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{key}={target!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}={target}: cannot import module '{module_name}' ({exc})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"{key}={target}: module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise ConfigError(f"{key}={target}: '{attr}' is not callable")
    return fn
