"""The ``alignkit`` command line.

    alignkit train [hydra overrides]     train (--help: what alignkit is and the config groups; Hydra's
                                         --hydra-help, --cfg job, -m pass through)
    alignkit train resume=RUN [k=v ...]  continue a run (or pipeline) from its saved config
    alignkit plugins                     JSON: loaded plugins, what they registered, failures
    alignkit ls methods|losses|...       a table of registered names
    alignkit launch --nproc N [overrides]  train on N processes (config composed once, saved, read by workers)
    alignkit chat [--model PATH]         talk to a model or a run's checkpoint
    alignkit <command>                   commands registered by plugins

User errors print one line ``alignkit: error: ...`` and exit non-zero (2) without a traceback;
set ``ALIGNKIT_DEBUG=1`` to see it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from .errors import AlignkitError, ConfigError, disk_full_as_error

HELP_FLAGS = ("-h", "--help")
ABOUT = "alignkit: a plugin registry of LLM alignment methods, trained by one generic loop."
LIST_KINDS = ("methods", "losses", "advantages", "rollouts", "engines", "is_corrections", "scorers", "data_formats",
              "commands")


def _error(message: str, code: int = 2) -> int:
    print(f"alignkit: error: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------- train
def _task(cfg) -> None:  # runs inside hydra.main
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("stages"):  # reached only through Hydra's own flags (-m, ...): one run per stage is ours to do
        sys.exit(_error("a multi-stage experiment (stages) runs without Hydra's flags: drop -m / --multirun"))
    _train_run(cfg, Path(HydraConfig.get().runtime.output_dir))


def _train_run(cfg, run_dir: Path) -> Any:
    """Train one run; an AlignkitError is one line and exit 2, and a fresh run that failed leaves no folder."""
    from .compose import validate
    from .loop import train
    from .runfolder import RunFolderError, remove_run_files

    fresh = not cfg.resume
    try:
        with disk_full_as_error(run_dir):
            validate(cfg)
            result = train(cfg, run_dir)
    except AlignkitError as exc:
        if os.environ.get("ALIGNKIT_DEBUG"):
            traceback.print_exc()
        # Nothing half-written: a fresh run that failed before its first checkpoint leaves no folder
        # (only what runs write is removed; a folder refused as another run's is left as it was).
        claimed = fresh and not isinstance(exc, RunFolderError)
        if claimed and not any((run_dir / "checkpoints").glob("step-*")) and not (run_dir / "final").exists():
            remove_run_files(run_dir)
        sys.exit(_error(str(exc), exc.exit_code))
    print_result(result)
    return result


def _train_stages(argv: list[str], cfg) -> int:
    """``alignkit train`` of an experiment with ``stages``: each stage trained into <run folder>/<stage>."""
    from .compose import compose
    from .stages import parse_stages, run_stages

    run_dir = Path(str(compose(argv, return_hydra_config=True).hydra.run.dir))
    results = run_stages(argv, parse_stages(cfg.stages), run_dir, resume=bool(cfg.resume), run=_train_run)
    print(f"\nalignkit: {len(results)} stage(s) trained; pipeline folder: {run_dir}")
    return 0


def _resume(argv: list[str], run_dir: Path) -> int:
    """``alignkit train resume=<run> [key=value ...]``: continue from the run's saved config (or pipeline)."""
    from .compose import compose
    from .runfolder import CONFIG, PIPELINE, resume_config
    from .stages import resume_stages

    overrides = [a for a in argv if not a.startswith("resume=")]
    if (run_dir / PIPELINE).is_file():
        results = resume_stages(run_dir, overrides, run=_train_run)
        print(f"\nalignkit: {len(results)} stage(s) trained; pipeline folder: {run_dir}")
        return 0
    if run_dir.is_dir() and not (run_dir / CONFIG).is_file():
        # A pipeline folder from before pipeline.yaml was kept: its command line names the stages.
        cfg = compose([*argv, f"hydra.run.dir={run_dir}"])
        if cfg.get("stages"):
            return _train_stages([*argv, f"hydra.run.dir={run_dir}"], cfg)
    _train_run(resume_config(run_dir, overrides), run_dir)
    return 0


def print_result(result) -> None:
    from .loop import format_metrics

    print(f"\nalignkit: finished {result.steps} steps")
    if result.eval_before:
        print(f"  held-out before: {format_metrics(result.eval_before)}")
    if result.eval_after:
        print(f"  held-out after:  {format_metrics(result.eval_after)}")
    for line in result.probe_report:
        print(line)
    print(f"  run folder:      {result.run_dir}")
    print(f"    metrics        {result.run_dir / 'metrics.jsonl'} (and tensorboard/)")
    if result.final_model:
        print(f"    final model    {result.final_model}  (alignkit chat --model {result.final_model})")
    print(f"    summary        {result.run_dir / 'summary.json'}")


def cmd_train(argv: list[str]) -> int:
    import hydra

    from .compose import CONFIG_MODULE, CONFIG_NAME, compose, setup, validate
    from .runfolder import claim_fresh, resume_target

    if any(arg in HELP_FLAGS for arg in argv):  # ours, not Hydra's banner and schema groups (--hydra-help is Hydra's)
        from .cli_help import train_help

        print(train_help(argv))
        return 0
    setup()
    passthrough = [arg for arg in argv if arg.startswith("-")]
    resume = resume_target(argv)
    if resume is not None:
        if passthrough:
            raise ConfigError(f"resume={resume} continues from {Path(resume) / 'config.yaml'} without Hydra's "
                              f"flags: drop {passthrough[0]}")
        return _resume(argv, Path(resume))
    if not passthrough:
        # Compose once up front so that config errors are one line and exit 2, not Hydra's report.
        cfg = compose(argv)
        if cfg.get("stages"):
            return _train_stages(argv, cfg)
        validate(cfg)
        # Before Hydra writes <run>/.hydra: a folder holding another run is refused (or cleared) untouched.
        claim_fresh(Path(str(compose(argv, return_hydra_config=True).hydra.run.dir)), overwrite=bool(cfg.overwrite))
    main = hydra.main(version_base=None, config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)(_task)
    saved = sys.argv
    sys.argv = ["alignkit train", *argv]
    try:
        main()
    finally:
        sys.argv = saved
    return 0


# ---------------------------------------------------------------------------- plugins / ls
def cmd_plugins(argv: list[str]) -> int:
    from .plugin_manager import get_manager

    argparse.ArgumentParser(prog="alignkit plugins", description="List loaded plugins as JSON.").parse_args(argv)
    print(json.dumps(get_manager().report(), indent=2))
    return 0


def cmd_ls(argv: list[str]) -> int:
    from .plugin_manager import get_manager

    parser = argparse.ArgumentParser(prog="alignkit ls", description="List registered names of one kind.")
    parser.add_argument("kind", choices=LIST_KINDS)
    args = parser.parse_args(argv)
    registry = get_manager().registry
    rows = [(e.name, e.owner.name, e.owner.version, e.spec.describe()) for e in registry.entries(args.kind)]
    if args.kind == "losses":  # what loss= accepts: each name, its aliases, and the method(s) that take it
        takers: dict[str, list[str]] = {}
        for method in registry.entries("methods"):
            takers.setdefault(method.spec.loss_family or "", []).append(method.name)
        rows = [(name, owner, version, summary + _loss_note(e.spec, takers.get(e.spec.family, [])))
                for (name, owner, version, summary), e in zip(rows, registry.entries("losses"))]
    header = ("name", "plugin", "version", "summary")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _loss_note(spec, methods: list[str]) -> str:
    notes = [f"method={'|'.join(methods)}"] if methods else []
    if spec.aliases:
        notes.append(f"aliases: {', '.join(spec.aliases)}")
    return f"  [{'; '.join(notes)}]" if notes else ""


def cmd_launch(argv: list[str]) -> int:
    from .launch import main as launch_main

    return launch_main(argv)


def cmd_chat(argv: list[str]) -> int:
    from .chat import main as chat_main

    return chat_main(argv)


BUILTIN_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (cmd_train, "train a method (Hydra overrides: method=dpo model=tiny trainer.max_steps=10 ...)"),
    "plugins": (cmd_plugins, "show loaded plugins, their versions, what they registered, load errors (JSON)"),
    "ls": (cmd_ls, "list methods | losses | advantages | rollouts | scorers | data_formats | commands"),
    "launch": (cmd_launch, "train on N processes: alignkit launch --nproc 2 method=sft ... (DDP / FSDP / DeepSpeed)"),
    "chat": (cmd_chat, "talk to a model, a checkpoint or a run's final model"),
}


def _usage(plugin_commands: dict) -> str:
    lines = [ABOUT, "", "usage: alignkit <command> [args]", "", "commands:"]
    for name, (_, help_text) in {**BUILTIN_COMMANDS, **plugin_commands}.items():
        lines.append(f"  {name:<10} {help_text}")
    lines += ["", "alignkit <command> --help tells more; alignkit train --help lists the config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from .plugin_manager import get_manager

        plugin_commands = {e.name: (e.spec.run, e.spec.describe()) for e in get_manager().registry.entries("commands")}
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(plugin_commands))
            return 0 if argv else 2
        if argv[0] in ("--version", "version"):
            from . import __version__

            print(f"alignkit {__version__}")
            return 0
        command = BUILTIN_COMMANDS.get(argv[0]) or plugin_commands.get(argv[0])
        if command is None:
            return _error(f"unknown command '{argv[0]}'; available: {', '.join([*BUILTIN_COMMANDS, *plugin_commands])}")
        return int(command[0](argv[1:]) or 0)
    except AlignkitError as exc:
        if os.environ.get("ALIGNKIT_DEBUG"):
            traceback.print_exc()
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted", 130)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
