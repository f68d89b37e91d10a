"""Run folders: one run per folder, and a resume that continues the run it names.

A *fresh* run (no ``resume=``) claims its folder: if the folder already holds a run's files it is
refused in one line naming the two ways out, ``resume=<folder>`` (continue that run) or
``overwrite=true`` (delete that run's files first and start clean), so two runs never share a
``metrics.jsonl`` or a reference cache. ``overwrite=true`` deletes only what a run writes (the
:data:`RUN_LAYOUT` below, and the stage folders of a pipeline folder that hold nothing else); a
folder that also holds anything else (a user's files, other runs under a ``runs/`` parent) is
refused instead, naming those entries, so nothing of the user's is ever deleted.

A *resumed* run continues from ``<run>/config.yaml``, the resolved config the run saved
(:func:`resume_config`); command-line ``key=value`` overrides apply on top. Before training,
:func:`prepare` compares the run's config with the saved one: each changed key is printed
(``resume: trainer.max_steps 40 -> 80``); a key outside :data:`RESUME_FREE_KEYS` changes what the
resumed steps compute, and is refused unless ``resume_force=true``; once the resumed run is built,
a changed config is written to ``config.yaml`` atomically, the previous one kept as
``config.resume-<n>.yaml`` and the change list appended to ``resumes.jsonl``. An unchanged config
leaves ``config.yaml`` untouched.

Multi-stage pipelines (:mod:`alignkit.stages`) record their stages and command line in
``<pipeline>/pipeline.yaml``, so ``resume=<pipeline folder>`` needs nothing else either.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
PIPELINE = "pipeline.yaml"
RESUMES = "resumes.jsonl"
PENDING = ".config.pending.yaml"
HYDRA_OUTPUT = ".hydra"

#: Everything a run writes at the top of its folder (names or ``fnmatch`` patterns): the core's files,
#: the built-in plugins' outputs (``rollout=generate``'s ``samples.jsonl``, ``rollout=cai``'s
#: ``cai_<stage>.jsonl`` and its ``.partial`` / ``.meta.json`` / ``.train.jsonl``, ``alignkit plot``'s
#: ``plots/``, the answer probe's ``probe/``), the experiment trackers' folders (added at run time, see
#: :func:`_layout`), hidden temporaries of atomic writes, and Hydra's ``.hydra/``.
RUN_LAYOUT = (
    CONFIG, "config.resume-*.yaml", "plugins.json", "metrics.jsonl", "summary.json", RESUMES, PIPELINE,
    "reference_logps.safetensors", "checkpoints", "final", "tensorboard", "samples.jsonl", "plots", "probe",
    "cai_*.jsonl", "cai_*.jsonl.partial", "cai_*.jsonl.meta.json", "cai_*.train.jsonl",
    ".*.tmp", ".*.tmp-*", PENDING, HYDRA_OUTPUT,
)

#: Top-level keys that steer the command itself, never what a run computes: not compared on resume.
META_KEYS = ("resume", "resume_force", "overwrite")

#: Keys a resume may change without ``resume_force=true``: they decide how long the run goes on, how
#: often it saves, logs and evaluates, and where metrics go, not what a step computes. (Evaluation
#: draws from its own seeded generator, so ``eval_every`` leaves the training stream alone.) Note that
#: a ``linear`` or ``cosine`` schedule is stretched over a new ``trainer.max_steps``.
RESUME_FREE_KEYS = (
    "trainer.max_steps", "trainer.save_every", "trainer.keep_last", "trainer.log_every", "trainer.eval_every",
    "trainer.progress", "trainer.tensorboard", "trainer.trackers", "trainer.tracker_project",
    "trainer.tracker_kwargs", "trainer.release_memory",
)

#: Config groups: selecting one (``method=dpo``, ``data=custom``) recomposes a whole node from the
#: package's defaults, which a resumed run does not do.
GROUPS = ("method", "model", "data", "trainer", "rollout", "scorer", "loss", "probe", "experiment")


class RunFolderError(ConfigError):
    """A fresh run was pointed at a folder that already holds a run (or, with overwrite, other files)."""


# ----------------------------------------------------------------------------- what a run wrote
def _layout() -> tuple[str, ...]:
    try:  # accelerate's trackers write <run>/<tracker name> (wandb: <run>/wandb)
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        trackers = tuple(LOGGER_TYPE_TO_CLASS)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        trackers = ()
    return RUN_LAYOUT + trackers


def _in_layout(name: str, layout: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in layout)


def _is_stage_folder(path: Path, layout: tuple[str, ...]) -> bool:
    """A stage of a pipeline (the parent holds ``pipeline.yaml``): a run folder holding nothing but run files.

    Run folders under any other folder (``runs/``) are not ours to delete with their parent's.
    """
    return (path.is_dir() and (path.parent / PIPELINE).is_file() and (path / CONFIG).is_file()
            and not _foreign(path, layout))


def _ours(path: Path, layout: tuple[str, ...]) -> bool:
    return _in_layout(path.name, layout) or _is_stage_folder(path, layout)


def _foreign(folder: Path, layout: tuple[str, ...]) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if not _ours(p, layout)]


def run_entries(folder: str | Path) -> list[Path]:
    """What earlier runs left in ``folder``: run files, and the stage folders of a pipeline (empty if none).

    Hydra's ``.hydra/`` alone is not a run: ``alignkit train`` has Hydra write it before training starts.
    """
    folder, layout = Path(folder), _layout()
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.name != HYDRA_OUTPUT and _ours(p, layout)]


def foreign_entries(folder: str | Path) -> list[Path]:
    """Entries of ``folder`` that no run wrote (a user's own files): never deleted by alignkit."""
    folder = Path(folder)
    return _foreign(folder, _layout()) if folder.is_dir() else []


def _names(paths: Iterable[Path], limit: int = 4) -> str:
    paths = list(paths)
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def remove_run_files(folder: str | Path) -> None:
    """Delete what runs wrote in ``folder`` (never other files); the folder too once it is empty."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    layout = _layout()
    for path in [p for p in sorted(folder.iterdir()) if _ours(p, layout)]:  # judged before pipeline.yaml goes
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def claim_fresh(run_dir: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print) -> None:
    """Make ``run_dir`` ready for a fresh run, or refuse in one line.

    Args:
        run_dir: the run's folder (it may not exist yet).
        overwrite: delete an earlier run's files first (``overwrite=true``), instead of refusing.
        log: where the note about deleted files goes.

    Raises:
        RunFolderError: the folder holds a run and ``overwrite`` is false, or it also holds files no
            run wrote (then nothing is deleted).
    """
    run_dir = Path(run_dir)
    found = run_entries(run_dir)
    if not found:
        return
    if not overwrite:
        raise RunFolderError(f"{run_dir} already holds a run ({_names(found)}); continue it with resume={run_dir}, "
                             f"or start again there with overwrite=true (deletes that run's files), or pick another "
                             f"hydra.run.dir")
    foreign = foreign_entries(run_dir)
    if foreign:
        raise RunFolderError(f"overwrite=true: {run_dir} also holds files no alignkit run wrote ({_names(foreign)}); "
                             "nothing was deleted: move them away or pick another hydra.run.dir")
    remove_run_files(run_dir)
    log(f"overwrite=true: removed the earlier run's files from {run_dir}")


# ----------------------------------------------------------------------------- saved configs
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))


def load_saved_config(run_dir: str | Path) -> DictConfig | None:
    """``<run>/config.yaml`` (the resolved config the run saved), or None when there is none."""
    path = Path(run_dir) / CONFIG
    return OmegaConf.load(path) if path.is_file() else None  # type: ignore[return-value]


def write_run_files(cfg: DictConfig, run_dir: str | Path) -> None:
    """``config.yaml`` (resolved, written atomically) and ``plugins.json`` (what was loaded)."""
    from .plugin_manager import get_manager

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / CONFIG, _yaml(cfg))
    _atomic_write(run_dir / "plugins.json", json.dumps(get_manager().report(), indent=1))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted key; lists are leaves (compared whole)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


_ABSENT = object()


def config_changes(saved: DictConfig, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` for every leaf that differs, the meta keys aside."""
    old = _flatten(OmegaConf.to_container(saved, resolve=True))
    new = _flatten(OmegaConf.to_container(cfg, resolve=True))
    changes = {}
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in META_KEYS:
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b or type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            changes[key] = (a, b)
    return changes


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if not value or any(c.isspace() for c in value) else value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def is_free(key: str) -> bool:
    """Whether a resume may change ``key`` without ``resume_force`` (:data:`RESUME_FREE_KEYS`)."""
    return any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)


def _check_identity(changes: dict[str, tuple[Any, Any]], run_dir: Path) -> None:
    """CheckpointError for another method or model: the checkpoint manifest would refuse it too, later."""
    for key, what in (("method.name", "method"), ("model.name", "model")):
        if key in changes:
            old, new = changes[key]
            raise CheckpointError(f"resume={run_dir}: that run trained {what} '{old}', this one asks for '{new}'")


def check_resume_changes(changes: dict[str, tuple[Any, Any]], run_dir: Path, *, force: bool) -> None:
    """Refuse changes that break exactness (unless ``force``); CheckpointError for another method or model."""
    _check_identity(changes, run_dir)
    breaking = [key for key in changes if not is_free(key)]
    if breaking and not force:
        shown = "; ".join(f"{key} {_show(changes[key][0])} -> {_show(changes[key][1])}" for key in breaking[:3])
        more = f" and {len(breaking) - 3} more" if len(breaking) > 3 else ""
        raise ConfigError(f"resume={run_dir}: {shown}{more} would change what the resumed steps compute (a resume "
                          f"may change only trainer.max_steps and the save / log / eval cadence); drop the "
                          f"override, or add resume_force=true to continue anyway")


def describe_changes(changes: dict[str, tuple[Any, Any]], cfg: DictConfig) -> list[str]:
    """One ``resume: key old -> new`` line per change, with what it means where that is not obvious."""
    lines = []
    for key, (old, new) in changes.items():
        note = "" if is_free(key) else "  (resume_force: the run no longer equals one that never stopped)"
        if key == "trainer.max_steps":
            schedule = str(OmegaConf.select(cfg, "trainer.scheduler.name", default="constant"))
            if schedule != "constant":
                note = (f"  (the {schedule} learning-rate schedule now spans {new} steps: the remaining "
                        "steps' learning rates differ from the original plan)")
        lines.append(f"resume: {key} {_show(old)} -> {_show(new)}{note}")
    return lines


def _record_changes(run_dir: Path, cfg: DictConfig, changes: dict[str, tuple[Any, Any]], forced: bool) -> None:
    """Keep the previous ``config.yaml`` as ``config.resume-<n>.yaml``, write the new one, log the changes."""
    number = 1 + len(list(run_dir.glob("config.resume-*.yaml")))
    shutil.copy2(run_dir / CONFIG, run_dir / f"config.resume-{number}.yaml")
    _atomic_write(run_dir / CONFIG, _yaml(cfg))
    record = {"resume": number, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "forced": forced,
              "previous_config": f"config.resume-{number}.yaml",
              "changes": {k: [None if v is _ABSENT else v for v in pair] for k, pair in changes.items()}}
    with open(run_dir / RESUMES, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def _no_op() -> None:
    return None


def prepare(cfg: DictConfig, run_dir: str | Path, *, log: Callable[[str], None] = print,
            pending: bool = False) -> Callable[[], None]:
    """Get ``run_dir`` ready for the run ``cfg`` before anything trains (every entry point calls this).

    Fresh: :func:`claim_fresh` (``overwrite``), then ``data.format: auto`` inferred from the data
    (:func:`alignkit.data.settle_run_format`, logged), then ``config.yaml`` and ``plugins.json``. Resumed:
    the config is compared with the saved one and each change printed and checked; the changes are
    recorded only by the returned ``commit()``, which the caller runs once the run is built (so a
    resume that fails to start, say on a stale reference cache, leaves ``config.yaml`` as it was).

    Args:
        cfg: the run's config.
        run_dir: its folder.
        log: where change lines go.
        pending: write a changed config to ``.config.pending.yaml`` now, for processes started
            later to read (``alignkit launch``'s workers; :func:`run_config`), and let
            :func:`commit_pending` record it.

    Returns:
        ``commit()``: records a resume's config changes (a no-op otherwise).

    Raises:
        RunFolderError: a fresh run into a folder holding a run (see :func:`claim_fresh`).
        CheckpointError: ``resume=`` names no folder, or another method or model.
        ConfigError: a resume that changes what the steps compute without ``resume_force=true``, or
            a ``resume=`` folder other than the run folder.
    """
    from .data import settle_run_format

    run_dir = Path(run_dir)
    if not cfg.get("resume"):
        claim_fresh(run_dir, overwrite=bool(cfg.get("overwrite", False)), log=log)
        settle_run_format(cfg, log)  # data.format=auto: the inferred format is what config.yaml records
        write_run_files(cfg, run_dir)
        return _no_op
    resume_dir = Path(str(cfg.resume))
    if not resume_dir.is_dir():
        raise CheckpointError(f"resume={resume_dir}: no such run folder")
    if resume_dir.resolve() != run_dir.resolve():
        raise ConfigError(f"resume={resume_dir} continues in its own folder; drop hydra.run.dir={run_dir}")
    if cfg.get("overwrite"):
        raise ConfigError("overwrite=true starts a run again from scratch and resume= continues it: pass one of them")
    (run_dir / PENDING).unlink(missing_ok=True)  # left by a launch whose workers failed to start
    saved = load_saved_config(run_dir)
    if saved is None:  # a folder from before config.yaml was kept: record what continues it
        settle_run_format(cfg, log)
        write_run_files(cfg, run_dir)
        return _no_op
    changes = config_changes(saved, cfg)
    forced = bool(cfg.get("resume_force", False))
    check_resume_changes(changes, run_dir, force=forced)
    for line in describe_changes(changes, cfg):
        log(line)
    if not changes:
        return _no_op
    if pending:
        _atomic_write(run_dir / PENDING, _yaml(cfg))
        return lambda: commit_pending(run_dir)
    return lambda: _record_changes(run_dir, cfg, changes, forced)


def run_config(run_dir: str | Path, *, resume: bool) -> DictConfig:
    """The config a process started by ``alignkit launch`` trains: the pending one of a changed resume, or
    ``config.yaml``; ``resume`` sets ``cfg.resume`` (``config.yaml`` keeps the run's config, not the call's)."""
    run_dir = Path(run_dir)
    cfg = None
    if resume:
        try:
            cfg = OmegaConf.load(run_dir / PENDING)
        except FileNotFoundError:  # none, or already committed by the main process into config.yaml
            cfg = None
    if cfg is None:
        path = run_dir / CONFIG
        if not path.is_file():
            raise ConfigError(f"{path}: missing; start workers with 'alignkit launch', which writes it")
        cfg = OmegaConf.load(path)
    cfg.resume = str(run_dir) if resume else None
    return cfg  # type: ignore[return-value]


def commit_pending(run_dir: str | Path) -> None:
    """Record the pending config of a changed resume as the run's ``config.yaml`` (see :func:`prepare`)."""
    run_dir = Path(run_dir)
    path = run_dir / PENDING
    saved = load_saved_config(run_dir)
    if not path.is_file() or saved is None:
        return
    cfg: DictConfig = OmegaConf.load(path)  # type: ignore[assignment]
    _record_changes(run_dir, cfg, config_changes(saved, cfg), bool(cfg.get("resume_force", False)))
    path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- resume from the saved config
def parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra's parse of command-line overrides (``Override`` objects); ConfigError on a syntax error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .compose import explain

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's parser raises its own error types
        raise ConfigError(explain(exc)) from exc


def is_group_selection(override: Any) -> bool:
    """``method=dpo``, ``+experiment=x``, ``data@foo=y``: a config group option, not a single key."""
    return override.package is not None or override.key_or_group in GROUPS


def resume_target(argv: list[str]) -> str | None:
    """The folder of the last ``resume=`` on a command line (None when absent or null)."""
    value = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("resume=")), None)
    return None if value in (None, "", "null", "None") else value


def _apply(saved: DictConfig, overrides: list[str]) -> DictConfig:
    """``saved`` with Hydra ``key=value`` / ``+key=value`` / ``~key`` overrides applied, as Hydra applies them."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .compose import explain, setup

    if not overrides:
        return saved
    setup()
    with tempfile.TemporaryDirectory(prefix="alignkit-resume-") as folder:
        (Path(folder) / "run.yaml").write_text(OmegaConf.to_yaml(saved))
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=folder, version_base=None):
                return hydra_compose("run", overrides=overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra and OmegaConf raise many types
            raise ConfigError(explain(exc)) from exc
        finally:
            GlobalHydra.instance().clear()


def _has_key(cfg: DictConfig, key: str) -> bool:
    missing = object()
    return OmegaConf.select(cfg, key, default=missing) is not missing


def _check_types(changes: dict[str, tuple[Any, Any]]) -> None:
    """A changed value keeps its type (an int where a float was is fine: Hydra reads ``1`` as an int)."""
    for key, (old, new) in changes.items():
        if old is _ABSENT or new is _ABSENT or old is None or new is None or type(old) is type(new):
            continue
        if isinstance(old, float) and type(new) is int:
            continue
        raise ConfigError(f"config key {key}: {_show(new)} is not a {type(old).__name__} like the run's {_show(old)}")


def resume_config(run_dir: str | Path, overrides: list[str]) -> DictConfig:
    """The config that continues the run in ``run_dir``: its saved ``config.yaml`` plus ``overrides``.

    ``overrides`` are the command line's without ``resume=``: ``key=value`` changes (checked against
    what a resume may change by :func:`prepare`), ``resume_force=true``, and ``hydra.run.dir=<the same
    folder>``. Group selections (``method=dpo``, ``data=custom``) recompose whole nodes from the
    package defaults: they are accepted only when the whole command line restates the run (as a
    script that repeats its ``alignkit train`` line does), and refused otherwise.

    Raises:
        CheckpointError: no such folder, or no ``config.yaml`` in it; another method or model.
        ConfigError: a group selection that does not restate the run, a Hydra option, a bad override.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={run_dir}: no such run folder")
    saved = load_saved_config(run_dir)
    if saved is None:
        raise CheckpointError(f"resume={run_dir}: no {CONFIG} in it; not a run folder written by alignkit train")
    meta: dict[str, Any] = {}
    keys, groups, line = [], [], []
    for text, override in zip(overrides, parse_overrides(overrides)):
        key = override.key_or_group
        if key == "hydra.run.dir":
            if Path(str(override.value())).resolve() != run_dir.resolve():
                raise ConfigError(f"resume={run_dir} continues in its own folder; drop {text}")
            continue
        if key.startswith("hydra.") or key == "hydra":
            raise ConfigError(f"{text}: Hydra options have no effect on a resumed run (it continues in "
                              f"{run_dir}); drop it")
        if key in META_KEYS:
            meta[key] = override.value()
            continue
        line.append(text)  # as typed: a restated command line is composed afresh as it was
        if override.is_add() and not is_group_selection(override) and _has_key(saved, key):
            text = text[1:]  # ``+key=v`` added the key to the fresh run; the saved config has it: a plain change
        (groups if is_group_selection(override) else keys).append(text)
    cfg = _apply(saved, keys)
    changes = config_changes(saved, cfg)
    _check_types(changes)
    _check_identity(changes, run_dir)
    if groups:
        _check_restated(run_dir, cfg, line, groups)
    with open_dict(cfg):
        cfg.resume = str(run_dir)
        cfg.resume_force = bool(meta.get("resume_force", False))
        cfg.overwrite = bool(meta.get("overwrite", False))
    return cfg


def _check_restated(run_dir: Path, cfg: DictConfig, line: list[str], groups: list[str]) -> None:
    """Group selections on a resume must restate the run: the line composed afresh gives ``cfg``."""
    from .compose import compose

    fresh = compose(line)
    differ = config_changes(cfg, fresh)
    if not differ:
        return
    selected = {g.lstrip("+~").split("=", 1)[0].split("@", 1)[0] for g in groups}
    for key, what in (("method.name", "method"), ("model.name", "model")):
        if key in differ and what in selected:  # the line asks for another method or model by name
            raise CheckpointError(f"resume={run_dir}: that run trained {what} '{differ[key][0]}', "
                                  f"this one asks for '{differ[key][1]}'")
    raise ConfigError(f"resume={run_dir}: {' '.join(groups)} would recompose the run's config from the defaults "
                      f"(changing {', '.join(list(differ)[:3])}{' ...' if len(differ) > 3 else ''}); a resumed run "
                      f"continues from {run_dir / CONFIG}: drop them and change single keys with key=value")
