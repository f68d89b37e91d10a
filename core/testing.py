"""``alignkit.testing``: pytest fixtures for alignkit and plugin authors (a ``pytest11`` plugin).

Fixtures:
    alignkit_compose: ``compose(*overrides)`` -> a validated run config on ``model=tiny``.
    alignkit_run: ``run(*overrides, run_dir=None)`` -> trains with the CLI's code path, returns
        the :class:`alignkit.loop.RunResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

TINY_DEFAULTS = ("model=tiny", "trainer.progress=false", "trainer.tensorboard=false")


def compose_run_config(*overrides: str, run_dir: str | Path | None = None) -> Any:
    """Compose ``train.yaml`` on ``model=tiny`` with ``overrides`` and validate it."""
    from alignkit.compose import compose, validate

    extra = [f"hydra.run.dir={run_dir}"] if run_dir else []
    cfg = compose([*TINY_DEFAULTS, *overrides, *extra])
    validate(cfg)
    return cfg


def run_training(*overrides: str, run_dir: str | Path) -> Any:
    """Compose and train into ``run_dir`` (no Hydra job machinery)."""
    from alignkit.loop import train

    cfg = compose_run_config(*overrides)
    return train(cfg, Path(run_dir))


@pytest.fixture
def alignkit_compose() -> Callable[..., Any]:
    return compose_run_config


@pytest.fixture
def alignkit_run(tmp_path: Path) -> Callable[..., Any]:
    def run(*overrides: str, run_dir: str | Path | None = None) -> Any:
        return run_training(*overrides, run_dir=run_dir or tmp_path / "run")

    return run
