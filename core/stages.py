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
and one folder. Command-line overrides apply to every stage (after the stage's own, so they win).
The pipeline folder keeps its stages and command line in ``pipeline.yaml``, so
``alignkit train resume=<pipeline folder>`` needs nothing else: it skips the stages that finished
(their ``final/`` exists), resumes the one with checkpoints from its own saved config (new
``key=value`` overrides checked as for any resume, :mod:`alignkit.runfolder`), restarts a stage that
stopped before its first checkpoint, and trains the rest. A fresh pipeline into a folder that holds
one is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import ConfigError
from .runfolder import PIPELINE, claim_fresh, run_entries

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# Overrides that pick the pipeline or its folder, not something a stage's run should see.
_PIPELINE_KEYS = ("experiment=", "+experiment=", "hydra.run.dir=", "resume=", "stages=", "+stages=")
# Overrides about this invocation's folder, not the pipeline: not recorded in pipeline.yaml.
_FOLDER_KEYS = ("hydra.run.dir=", "resume=", "overwrite=", "resume_force=")


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
               log: Callable[[str], None] = print, resume_overrides: Sequence[str] = ()) -> list[Any]:
    """Train every stage in order into ``run_dir/<name>``; returns the results of the stages it ran.

    Every stage is composed (and so checked) before the first one trains, so a typo in the last stage
    fails at once rather than after hours. A fresh pipeline claims ``run_dir`` (refused if it holds a
    run, unless ``overwrite=true``) and records itself in ``pipeline.yaml``. With ``resume``, a stage
    whose ``final/`` exists is skipped, one with checkpoints continues from its saved config plus
    ``resume_overrides`` (:func:`alignkit.runfolder.resume_config`), and one that stopped before its
    first checkpoint starts again.
    """
    from .runfolder import resume_config

    overrides = [stage_overrides(stage, argv, run_dir) for stage in stages]
    configs = [compose(o) for o in overrides]
    for stage, cfg in zip(stages, configs):
        if cfg.get("stages"):
            raise ConfigError(f"stages: stage '{stage.name}' composes to another multi-stage experiment")
    if not resume:
        claim_fresh(run_dir, overwrite=any(bool(cfg.get("overwrite")) for cfg in configs), log=log)
        write_pipeline(run_dir, stages, argv)
    results = []
    try:
        for number, (stage, cfg, used) in enumerate(zip(stages, configs, overrides), 1):
            folder = run_dir / stage.name
            if resume and (folder / "final").is_dir():
                log(f"stage {number}/{len(stages)} {stage.name}: finished earlier ({folder / 'final'}), skipped")
                continue
            if resume and any((folder / "checkpoints").glob("step-*")):
                if (folder / "config.yaml").is_file():
                    cfg = resume_config(folder, list(resume_overrides))
                else:
                    cfg.resume = str(folder)
            elif resume and run_entries(folder):  # stopped before its first checkpoint: nothing to continue
                with open_dict(cfg):
                    cfg.overwrite = True
            log(f"stage {number}/{len(stages)} {stage.name}: {' '.join(used) or '(defaults)'}")
            results.append(run(cfg, folder))
    finally:
        if not resume and not any((run_dir / stage.name).exists() for stage in stages):
            # The first stage failed fresh: leave nothing behind.
            (run_dir / PIPELINE).unlink(missing_ok=True)
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
    return results


def write_pipeline(run_dir: Path, stages: list[Stage], argv: list[str]) -> None:
    """``<run_dir>/pipeline.yaml``: the stages and the command line, what ``resume=<run_dir>`` continues."""
    kept = [a for a in argv if not a.startswith(_FOLDER_KEYS)]
    spec = {"stages": [{"name": s.name, "overrides": list(s.overrides), "model_from": s.model_from} for s in stages],
            "overrides": kept}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{PIPELINE}.tmp"
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
    os.replace(tmp, run_dir / PIPELINE)


def resume_stages(run_dir: Path, overrides: list[str], *, run: Callable[[DictConfig, Path], Any],
                  log: Callable[[str], None] = print) -> list[Any]:
    """Continue the pipeline in ``run_dir`` from its ``pipeline.yaml``; ``overrides`` are the command line's.

    Overrides that repeat the pipeline's own command line are no-ops; new ``key=value`` ones apply to
    every stage still to train (checked like any resume for a stage that continues). A new group
    selection or ``stages=`` would make it another pipeline and is refused.
    """
    from .runfolder import is_group_selection, parse_overrides

    spec = OmegaConf.to_container(OmegaConf.load(run_dir / PIPELINE))
    saved = list(spec.get("overrides") or [])
    new = []
    for text, override in zip(overrides, parse_overrides(overrides)):
        if override.key_or_group == "hydra.run.dir":
            if Path(str(override.value())).resolve() != run_dir.resolve():
                raise ConfigError(f"resume={run_dir} continues in its own folder; drop {text}")
            continue
        if text in saved:
            continue
        if is_group_selection(override) or text.startswith(_PIPELINE_KEYS):
            raise ConfigError(f"resume={run_dir}: {text} would make it another pipeline; a resumed pipeline "
                              f"continues from {run_dir / PIPELINE}: drop it and change single keys with key=value")
        new.append(text)
    stages = parse_stages(spec.get("stages") or [])
    return run_stages([*saved, *new], stages, run_dir, resume=True, run=run, log=log, resume_overrides=new)
