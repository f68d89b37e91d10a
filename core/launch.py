"""``alignkit launch --nproc N [train overrides]``: one config, N training processes.

The config is composed and validated once, here, and saved into the run folder (``config.yaml``,
``plugins.json``; a folder holding another run is refused unless ``overwrite=true``, and
``resume=<run>`` starts from the run's own ``config.yaml``, as ``alignkit train`` does); then
``torchrun --standalone`` (default) or ``accelerate launch`` starts N workers
(``python -m alignkit.worker <run folder>``) that read that saved config, so every process trains
exactly the same resolved config. Each worker builds the usual :class:`alignkit.loop.Trainer`; on
more than one process accelerate wraps the policy in DDP (gloo on CPU, NCCL on GPUs) or the FSDP /
DeepSpeed engine chosen by ``trainer.strategy``. Only the main process logs, writes metrics and
checkpoints.

    alignkit launch --nproc 2 method=sft model=tiny trainer.batch_size=8 hydra.run.dir=runs/sft-ddp
    alignkit launch --nproc 8 --launcher accelerate trainer=fsdp method=dpo ...   # one GPU node
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import AlignkitError, ConfigError

LAUNCHERS = ("torchrun", "accelerate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkit launch",
        description="Compose and validate a training config once, save it into the run folder, then start "
                    "N worker processes (torchrun or accelerate launch) that train from the saved config.",
        epilog="Everything else is a Hydra override, as for 'alignkit train' (hydra.run.dir=... picks the run folder).")
    parser.add_argument("--nproc", type=int, required=True, help="processes on this machine (GPUs, or CPU workers on gloo)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun",
                        help="torchrun --standalone (default) or accelerate launch --multi_gpu")
    parser.add_argument("--print-command", action="store_true", help="save the config and print the worker command, do not run it")
    return parser


def run_folder(overrides: list[str], method: str) -> Path:
    """``hydra.run.dir=`` if given, else the ``resume=`` folder, else ``runs/<method>-<time>`` (like train)."""
    for prefix in ("hydra.run.dir=", "resume="):
        given = next((a.split("=", 1)[1] for a in overrides if a.startswith(prefix)), None)
        if given:
            return Path(given)
    return Path("runs") / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def worker_command(launcher: str, nproc: int, run_dir: Path, mixed_precision: str = "no", *,
                   resume: bool = False) -> list[str]:
    """The command that starts ``nproc`` workers on the saved config in ``run_dir`` (``resume``: continue it)."""
    worker = ["-m", "alignkit.worker", str(run_dir), *(["--resume"] if resume else [])]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *worker]
    # "--cpu --num_processes N" silently runs one process; --multi_gpu starts N (gloo without GPUs).
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no", *worker]


def main(argv: list[str]) -> int:
    from .compose import compose, setup, validate
    from .distributed import per_process_batch
    from .runfolder import PENDING, PIPELINE, prepare, remove_run_files, resume_config, resume_target

    args, overrides = _parser().parse_known_args(argv)
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise ConfigError(f"alignkit launch: unknown option {flags[0]}; options are --nproc, --launcher, --print-command")
    if args.nproc < 1:
        raise ConfigError(f"alignkit launch: --nproc {args.nproc}; expected 1 or more processes")
    setup()
    resume = resume_target(overrides)
    if resume is not None:
        # As alignkit train: the run's own saved config, key=value overrides on top (checked by prepare).
        run_dir = Path(resume).resolve()
        if (run_dir / PIPELINE).is_file():
            raise ConfigError(f"alignkit launch: {run_dir} is a multi-stage pipeline; continue it with "
                              f"alignkit train resume={resume}")
        cfg = resume_config(run_dir, [a for a in overrides if not a.startswith("resume=")])
    else:
        cfg = compose([a for a in overrides if not a.startswith("hydra.")])
        run_dir = run_folder(overrides, cfg.method.name).resolve()
    validate(cfg)
    per_process_batch(int(cfg.trainer.batch_size), args.nproc)  # the global batch must split evenly
    # A fresh run claims the folder; a resume prints and checks changes, left pending for the workers.
    prepare(cfg, run_dir, pending=True)
    command = worker_command(args.launcher, args.nproc, run_dir, cfg.trainer.mixed_precision,
                             resume=bool(cfg.resume))
    if args.print_command:
        print(" ".join(command))
        return 0
    print(f"alignkit: launching {args.nproc} processes ({args.launcher}) on {run_dir / 'config.yaml'}", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    code = subprocess.call(command, env=env)
    if code != 0:
        # As alignkit train: a fresh run that failed before its first checkpoint leaves no folder.
        fresh = not cfg.resume and not any((run_dir / "checkpoints").glob("step-*")) and not (run_dir / "final").exists()
        if fresh:
            remove_run_files(run_dir)
        (run_dir / PENDING).unlink(missing_ok=True)  # a resume that did not start changes nothing
        raise LaunchError(f"alignkit launch: the workers exited with code {code} (their messages are above)")
    return 0


class LaunchError(AlignkitError):
    """One or more worker processes failed."""

    exit_code = 1
