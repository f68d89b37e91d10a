"""Metrics to ``metrics.jsonl`` (one JSON object a line) and to experiment trackers.

Trackers are accelerate's (``accelerate.tracking``): ``tensorboard`` (on by default, under
``<run>/tensorboard``), ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``, ``dvclive``,
``swanlab``, ``trackio``, chosen with ``trainer.trackers=[tensorboard,wandb]``. ``metrics.jsonl``
is always written: it is what ``alignkit plot`` reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import ConfigError

#: pip package of each accelerate tracker, for the "not installed" error.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


def is_wall_time(key: str) -> bool:
    """Whether a metric measures wall time (``elapsed_s``, ``rollout/generate_s``, ``scorer/math_seconds``):
    the keys that differ between two otherwise identical runs."""
    return key.endswith("_s") or key.endswith("_seconds")


def format_metrics(values: dict[str, float]) -> str:
    """``name=value`` pairs on one line (4 significant digits), for logs and the end-of-run report."""
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}" for k, v in values.items())


def tracker_names(trainer_cfg: Any) -> list[str]:
    """The trackers a ``trainer`` config asks for (``trainer.tensorboard=false`` drops TensorBoard)."""
    names = [str(n) for n in (trainer_cfg.get("trackers", None) or [])]
    if not trainer_cfg.get("tensorboard", True):
        names = [n for n in names if n != "tensorboard"]
    return list(dict.fromkeys(names))


def check_trackers(names: Sequence[str]) -> None:
    """ConfigError naming the first tracker that accelerate does not know or that is not installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"trainer.trackers: unknown tracker {name!r}; available: {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise ConfigError(f"trainer.trackers: {name} is not installed; pip install {TRACKER_PACKAGES.get(name, name)} "
                              f"(or drop it: trainer.trackers=[tensorboard])")


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become strings (tracker hparams are scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class MetricsLogger:
    """Appends ``{"step": ..., "split": ..., <metrics>}`` lines; mirrors them to the trackers.

    Args:
        run_dir: the run folder; writes ``metrics.jsonl`` (and ``tensorboard/``) there.
        tensorboard: shorthand used when ``trackers`` is None: TensorBoard on or off.
        enabled: False on non-main processes (nothing is written, no tracker starts).
        trackers: accelerate tracker names (``tensorboard``, ``wandb``, ...); tags are ``<split>/<key>``.
        project: the tracker project (W&B project, MLflow experiment); the run is named after ``run_dir``.
        config: the run config, stored as the trackers' hyper-parameters.
        tracker_kwargs: per-tracker keyword arguments, e.g. ``{"wandb": {"entity": "me"}}``.
        resume_step: the step of the checkpoint a resumed run starts from. TensorBoard then discards
            the earlier event files' values after that step (``SummaryWriter(purge_step=...)``), as
            ``metrics.jsonl`` drops its lines, so a curve does not show the replayed steps twice.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True,
                 trackers: Sequence[str] | None = None, project: str = "alignkit", config: dict | None = None,
                 tracker_kwargs: dict[str, dict] | None = None, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers: list[Any] = []
        names = list(trackers) if trackers is not None else (["tensorboard"] if tensorboard else [])
        kwargs = {name: dict(options) for name, options in (tracker_kwargs or {}).items()}
        if resume_step is not None:
            kwargs.setdefault("tensorboard", {}).setdefault("purge_step", resume_step + 1)
        if enabled and names:
            self.trackers = _start_trackers(names, Path(run_dir), project, config or {}, kwargs)

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, *, enabled: bool = True,
                    resume_step: int | None = None) -> "MetricsLogger":
        """The logger a run config asks for (``trainer.trackers``, ``trainer.tracker_project``, ...)."""
        from omegaconf import OmegaConf

        tcfg = cfg.trainer
        kwargs = tcfg.get("tracker_kwargs", None)
        return cls(run_dir, enabled=enabled, trackers=tracker_names(tcfg), project=str(tcfg.get("tracker_project", "alignkit")),
                   config=OmegaConf.to_container(cfg, resolve=True) if enabled else None,
                   tracker_kwargs=OmegaConf.to_container(kwargs, resolve=True) if kwargs else None,
                   resume_step=resume_step)

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> dict[str, float]:
        values = {k: to_float(v) for k, v in metrics.items()}
        if not self.enabled:
            return values
        record = {"step": step, "split": split, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        tagged = {f"{split}/{key}": value for key, value in values.items()}
        for tracker in self.trackers:
            tracker.log(tagged, step=step)
        return values

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _start_trackers(names: list[str], run_dir: Path, project: str, config: dict, kwargs: dict[str, dict]) -> list[Any]:
    """Build and start accelerate trackers the way ``Accelerator.init_trackers`` does."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    check_trackers(names)
    hparams = _flat_config(config)
    started = []
    for name in names:
        cls = LOGGER_TYPE_TO_CLASS[name]
        options = dict(kwargs.get(name, {}))
        if name == "tensorboard":
            tracker = cls("", str(run_dir / "tensorboard"), **options)
        elif name == "wandb":  # accelerate passes the project as run_name to wandb.init(project=...)
            options.setdefault("name", run_dir.name)
            options.setdefault("dir", str(run_dir))
            tracker = cls(project, **options)
        elif cls.requires_logging_directory:
            tracker = cls(project, str(run_dir / name), **options)
        else:
            tracker = cls(project, **options)
        tracker.start()
        if hparams and name != "tensorboard":  # TensorBoard's hparams view would add a sub-run per start
            tracker.store_init_configuration(hparams)
        started.append(tracker)
    return started


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``<run_dir>/metrics.jsonl``; a torn last line (a killed process) is dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return records
