"""Backend selection for the log-prob kernels and lazy loading of Triton.

The process-wide backend is ``"auto"`` (Triton for CUDA tensors, torch otherwise), ``"torch"`` or
``"triton"``. It starts from the ``ALIGNKIT_KERNELS`` environment variable and can be changed with
:func:`set_backend` (core calls it from the run's ``kernels=`` config). Every public op also takes a
per-call ``backend=`` that wins over the process-wide setting.

Triton is imported only when a Triton path is first needed, so ``import alignkit.kernels`` stays
cheap and works where Triton is not installed. Triton decides between compiled GPU kernels and
its CPU interpreter when a ``@triton.jit`` decorator runs, that is, when our kernel modules are
imported (and, for triton's own jit'd helpers such as ``tl.zeros``, when ``triton`` itself is
imported); so for CPU tensors we set ``TRITON_INTERPRET=1`` just before the first import of triton.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
ENV_VAR = "ALIGNKIT_KERNELS"

_backend: str | None = None  # None: not chosen yet, read ENV_VAR on first use


def _check(name: str, where: str) -> str:
    value = str(name).strip().lower()
    if value not in BACKENDS:
        raise ValueError(
            f"unknown kernels backend {name!r} ({where}); valid backends: {', '.join(BACKENDS)}"
        )
    return value


def set_backend(name: str) -> None:
    """Set the process-wide kernels backend.

    Args:
        name: ``"auto"`` (Triton on CUDA tensors, torch otherwise), ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: ``name`` is not one of the valid backends.
    """
    global _backend
    _backend = _check(name, "set_backend")


def get_backend() -> str:
    """Return the process-wide kernels backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Until :func:`set_backend` is called this is the ``ALIGNKIT_KERNELS`` environment variable,
    default ``"auto"``.

    Raises:
        ValueError: ``ALIGNKIT_KERNELS`` holds an unknown name.
    """
    if _backend is not None:
        return _backend
    return _check(os.environ.get(ENV_VAR, "auto") or "auto", f"environment variable {ENV_VAR}")


def triton_available() -> bool:
    """Whether the ``triton`` package is installed (it is a dependency on Linux x86_64 only)."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Pick the concrete backend (``"torch"`` or ``"triton"``) for one call.

    Args:
        backend: The per-call choice; ``None`` follows :func:`get_backend`.
        device: Device of the input tensors.

    Returns:
        ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"triton"`` was forced but the ``triton`` package is not installed.
    """
    name = get_backend() if backend is None else _check(backend, "backend= argument")
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton" and not triton_available():
        raise RuntimeError(
            "kernels backend 'triton' needs the triton package (pip install 'triton>=3.6'); "
            "use backend='torch' or ALIGNKIT_KERNELS=torch on this machine"
        )
    return name


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_loaded: dict[str, tuple[ModuleType, bool]] = {}


def load_triton_module(name: str, device: torch.device) -> ModuleType:
    """Import one of our Triton kernel modules (``alignkit.kernels.<name>``) for ``device``.

    On CPU tensors the kernels must be decorated under the Triton interpreter, so the first
    import sets ``TRITON_INTERPRET=1`` when it is unset. A module already imported the other way
    (compiled kernels, then CPU tensors) cannot be re-decorated in this process.

    Args:
        name: Module name inside ``alignkit.kernels``, e.g. ``"triton_logprobs"``.
        device: Device of the tensors the kernels will run on.

    Returns:
        The imported module.

    Raises:
        RuntimeError: CPU tensors but the kernels were compiled without the interpreter.
    """
    if name not in _loaded:
        if device.type != "cuda" and not _interpreter_on():
            if "triton" in sys.modules and not _triton_interpreted():
                raise RuntimeError(
                    "triton was imported without its CPU interpreter, so Triton kernels cannot "
                    f"run on {device.type} tensors: set TRITON_INTERPRET=1 before importing triton "
                    "(or use backend='torch')"
                )
            os.environ["TRITON_INTERPRET"] = "1"
        module = importlib.import_module(f"alignkit.kernels.{name}")
        _loaded[name] = (module, _interpreter_on())
    module, interpreted = _loaded[name]
    if device.type != "cuda" and not interpreted:
        raise RuntimeError(
            "Triton kernels were loaded without the interpreter and cannot run on "
            f"{device.type} tensors: set TRITON_INTERPRET=1 before importing triton "
            "(or use backend='torch')"
        )
    return module


def _triton_interpreted() -> bool:
    # triton's own @jit helpers (tl.zeros, tl.sum...) were decorated when triton was imported.
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)
