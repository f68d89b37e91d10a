"""Backend selection: ALIGNKIT_KERNELS, set_backend, per-call backend=, lazy Triton import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import alignkit.kernels as K
from alignkit.kernels import dispatch


@pytest.fixture(autouse=True)
def _restore_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_backend", None)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, 8, generator=gen)  # (B, T, d)
    weight = torch.randn(30, 8, generator=gen)  # (V, d)
    labels = torch.randint(0, 30, (2, 4), generator=gen)  # (B, T)
    return hidden, weight, labels


def test_default_is_auto_and_env_var_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert K.get_backend() == "auto"
    monkeypatch.setenv("ALIGNKIT_KERNELS", "torch")
    assert K.get_backend() == "torch"
    monkeypatch.setenv("ALIGNKIT_KERNELS", "Triton")
    assert K.get_backend() == "triton"


def test_set_backend_wins_over_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNKIT_KERNELS", "triton")
    K.set_backend("torch")
    assert K.get_backend() == "torch"


def test_unknown_names_raise_value_error_listing_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="auto, torch, triton"):
        K.set_backend("cuda")
    hidden, weight, labels = _data()
    with pytest.raises(ValueError, match="'fast'.*auto, torch, triton"):
        K.linear_token_logprobs(hidden, weight, labels, backend="fast")
    monkeypatch.setenv("ALIGNKIT_KERNELS", "nope")
    with pytest.raises(ValueError, match="ALIGNKIT_KERNELS"):
        K.token_logprobs(hidden @ weight.T, labels)


def test_auto_on_cpu_picks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object) -> None:
        raise AssertionError("auto must not load Triton for CPU tensors")

    monkeypatch.setattr("alignkit.kernels.logprobs.load_triton_module", forbidden)
    hidden, weight, labels = _data()
    assert dispatch.resolve_backend(None, torch.device("cpu")) == "torch"
    K.set_backend("auto")
    K.linear_token_logprobs(hidden, weight, labels)
    K.token_stats(hidden @ weight.T, labels, entropy=True)
    with pytest.raises(AssertionError, match="must not load"):
        K.token_logprobs(hidden @ weight.T, labels, backend="triton")


def test_backend_argument_wins_over_process_setting() -> None:
    K.set_backend("triton")
    assert dispatch.resolve_backend("torch", torch.device("cpu")) == "torch"
    K.set_backend("torch")
    assert dispatch.resolve_backend("triton", torch.device("cpu")) == "triton"


def test_missing_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.resolve_backend("auto", torch.device("cuda")) == "torch"
    hidden, weight, labels = _data()
    with pytest.raises(RuntimeError, match="needs the triton package"):
        K.linear_token_logprobs(hidden, weight, labels, backend="triton")


def test_compiled_kernels_refuse_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch._loaded, "triton_logprobs", (dispatch, False))
    hidden, weight, labels = _data()
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing triton"):
        K.token_logprobs(hidden @ weight.T, labels, backend="triton")


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ALIGNKIT_KERNELS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_does_not_import_triton() -> None:
    assert _run("import sys, alignkit.kernels; print('triton' in sys.modules)") == "False"


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton not installed")
def test_forced_triton_on_cpu_sets_interpreter_lazily() -> None:
    code = (
        "import os, sys, torch, alignkit.kernels as K\n"
        "x = torch.randn(1, 3, 20); y = torch.tensor([[1, 2, -100]])\n"
        "K.set_backend('auto'); K.token_logprobs(x, y)\n"
        "assert 'triton' not in sys.modules\n"
        "a = K.token_logprobs(x, y, backend='triton')\n"
        "b = K.token_logprobs(x, y, backend='torch')\n"
        "assert torch.allclose(a, b, atol=1e-6)\n"
        "print(os.environ['TRITON_INTERPRET'], 'triton' in sys.modules)\n"
    )
    assert _run(code) == "1 True"
    # triton imported without the interpreter: a one-line error saying what to do.
    out = _run(
        "import triton, torch, alignkit.kernels as K\n"
        "try:\n"
        "    K.token_logprobs(torch.randn(1, 2, 5), torch.tensor([[1, 2]]), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    assert "set TRITON_INTERPRET=1 before importing triton" in out and "\n" not in out
    # A process-wide ALIGNKIT_KERNELS=triton behaves the same.
    assert _run(code.replace("K.set_backend('auto'); K.token_logprobs(x, y)\n", "")
                .replace("assert 'triton' not in sys.modules\n", ""), ALIGNKIT_KERNELS="triton") \
        == "1 True"
