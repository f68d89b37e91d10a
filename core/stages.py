"""Multi-stage experiments: one ``alignkit train`` runs several trainings in order.

An experiment (or the command line) may list ``stages``; each is an ordinary run composed from the
stage's own overrides plus the command line's, trained into ``<run folder>/<stage name>``::

    stages:
      - name: sl
        overrides: [experiment=cai_sl]
      - name: rl
        overrides: [experiment=cai_rl]
        model_from: sl          # model.path=<run folder>/sl/final

So SFT -> DPO, a reward model -> PPO, or Constitutional AI's supervised -> RL stages are one command
and one folder. Command-line overrides apply to every stage (after the stage's own, so they win);
``resume=<run folder>`` skips the stages that finished (their ``final/`` exists) and resumes the first
one that did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# Overrides that pick the pipeline or its folder, not something a stage's run should see.
_PIPELINE_KEYS = ("experiment=", "+experiment=", "hydra.run.dir=", "resume=", "stages=", "+stages=")


@dataclass(frozen=True)
class Stage:
    """One stage: a run folder name, its overrides, and the earlier stage whose final model it starts from."""

    name: str
    overrides: tuple[str, ...]
    model_from: str | None = None


def parse_stages(node: Any) -> list[Stage]:
    """The ``stages`` list of a config as :class:`Stage` records; ConfigError naming the bad entry."""
    raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    if not isinstance(raw, list):
        raise ConfigError(f"stages: expected a list of {{name, overrides, model_from}}, got {type(raw).__name__}")
    stages: list[Stage] = []
    for i, entry in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected {{name, overrides, model_from}}, got {entry!r}")
        unknown = sorted(set(entry) - {"name", "overrides", "model_from"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: name, overrides, model_from)")
        name = entry.get("name")
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
            raise ConfigError(f"{where}.name: expected a folder name (letters, digits, _ or -), got {name!r}")
        if any(s.name == name for s in stages):
            raise ConfigError(f"{where}.name: '{name}' is used by an earlier stage")
        overrides = entry.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{where}.overrides: expected a list of override strings such as 'method=dpo'")
        model_from = entry.get("model_from")
        if model_from is not None and not any(s.name == model_from for s in stages):
            raise ConfigError(f"{where}.model_from: no earlier stage named {model_from!r} "
                              f"(earlier: {', '.join(s.name for s in stages) or 'none'})")
        stages.append(Stage(name, tuple(overrides), model_from))
    return stages


def stage_overrides(stage: Stage, argv: list[str], run_dir: Path) -> list[str]:
    """The overrides a stage's run is composed from: its own, then the command line's, then the chaining."""
    shared = [a for a in argv if not a.startswith(_PIPELINE_KEYS)]
    chained = [f"model.path={run_dir / stage.model_from / 'final'}"] if stage.model_from else []
    return [*stage.overrides, *shared, *chained]


def compose_checked(overrides: list[str]) -> DictConfig:
    """A stage's run config, composed and validated like ``alignkit train``'s (ConfigError otherwise)."""
    from .compose import compose, validate

    cfg = compose(overrides)
    validate(cfg)
    return cfg


def run_stages(argv: list[str], stages: list[Stage], run_dir: Path, *, resume: bool,
               run: Callable[[DictConfig, Path], Any], compose: Callable[[list[str]], DictConfig] = compose_checked,
               log: Callable[[str], None] = print) -> list[Any]:
    """Train every stage in order into ``run_dir/<name>``; returns the results of the stages it ran.

    Every stage is composed (and so checked) before the first one trains, so a typo in the last stage
    fails at once rather than after hours. With ``resume``, a stage whose ``final/`` exists is skipped
    and one with checkpoints continues from them.
    """
    overrides = [stage_overrides(stage, argv, run_dir) for stage in stages]
    configs = [compose(o) for o in overrides]
    for stage, cfg in zip(stages, configs):
        if cfg.get("stages"):
            raise ConfigError(f"stages: stage '{stage.name}' composes to another multi-stage experiment")
    results = []
    for number, (stage, cfg, used) in enumerate(zip(stages, configs, overrides), 1):
        folder = run_dir / stage.name
        if resume and (folder / "final").is_dir():
            log(f"stage {number}/{len(stages)} {stage.name}: finished earlier ({folder / 'final'}), skipped")
            continue
        if resume and any((folder / "checkpoints").glob("step-*")):
            cfg.resume = str(folder)
        log(f"stage {number}/{len(stages)} {stage.name}: {' '.join(used) or '(defaults)'}")
        results.append(run(cfg, folder))
    return results
