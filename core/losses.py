"""Every registered loss as a pure function: ``alignkit.losses.<name>``.

Built-in and third-party losses alike are registered through the ``register_losses`` hook; this
module looks them up on attribute access, so ``from alignkit.losses import dpo`` works for any
installed plugin's loss.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from .errors import UnknownNameError
    from .plugin_manager import get_registry

    try:
        return get_registry().get("losses", name).fn
    except UnknownNameError as exc:
        raise AttributeError(str(exc)) from None


def __dir__() -> list[str]:
    from .plugin_manager import get_registry

    return get_registry().names("losses")
