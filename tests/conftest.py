"""Shared fixtures: an offline environment, small data files, and a CLI runner."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
HH_TRAIN = REPO / "core" / "assets" / "data" / "hh_harmless" / "train.jsonl.gz"


@pytest.fixture(scope="session")
def hh_rows() -> list[dict]:
    with gzip.open(HH_TRAIN, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(40), handle)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"I will not answer {i}."} for i in range(24)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Say the number {i}.", "completion": f"{i}"} for i in range(24)]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr

    def __repr__(self) -> str:
        return f"<exit {self.returncode}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}>"


@pytest.fixture
def cli_main(capfd):
    """Run ``alignkit <args>`` in this process: ``(exit code, stdout, stderr)``, SystemExit included."""
    from alignkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli(tmp_path: Path):
    """Run ``alignkit ...`` in a subprocess (the real entry point), in ``tmp_path``."""

    def run(*args: str, env: dict | None = None, timeout: int = 300) -> CLIResult:
        full_env = {**os.environ, "ALIGNKIT_CACHE": os.environ.get("ALIGNKIT_CACHE", str(Path.home() / ".cache" / "alignkit")),
                    **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        return CLIResult(proc)

    return run


@pytest.fixture
def fresh_plugins():
    """Forget the process-wide plugin manager before and after the test."""
    from alignkit import compose
    from alignkit.plugin_manager import set_manager

    set_manager(None)
    compose.reset()
    yield
    set_manager(None)
    compose.reset()
