"""Training curves from a run's ``metrics.jsonl``: one PNG per metric family plus a grid of all.

Each metric line is ``{"step", "split": "train"|"eval", <name>: value, ...}`` (``alignkit.metrics``).
Metrics are grouped into families by name — loss, reward, KL, accuracy, margin, learning rate,
gradient norm — and any metric no family claims gets a panel of its own. Training values are drawn
as a faint raw line plus an exponential moving average (``smooth`` = α of the EMA's memory, 0 off);
held-out values as markers, with their 95% interval (``<name>_ci_low`` / ``<name>_ci_high``) as
error bars when the evaluation logged one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignkit.api import AlignkitError, pyplot

#: Metric names that are bookkeeping, not curves.
SKIPPED = {"step", "split", "elapsed_s", "pairs", "examples", "tokens", "completions"}


class PlotError(AlignkitError):
    """A run folder without metrics, or metrics that cannot be drawn."""


@dataclass(frozen=True)
class Family:
    """A group of metrics drawn on one set of axes."""

    name: str
    title: str
    claims: Callable[[str], bool]
    smooth: bool = True  # a schedule (the learning rate) is drawn as is


FAMILIES: tuple[Family, ...] = (
    Family("loss", "loss", lambda k: k == "loss" or k.endswith("_loss") or k in ("nll", "lm_nll", "mse")),
    Family("reward", "reward", lambda k: "reward" in k or k == "score"),
    Family("kl", "KL (kl: to the reference; approx_kl: π_old ‖ π)", lambda k: k == "kl" or k.startswith("kl_") or k.endswith("_kl")),
    Family("accuracy", "accuracy", lambda k: "accuracy" in k),
    Family("margin", "margin", lambda k: "margin" in k),
    Family("lr", "learning rate", lambda k: k in ("lr", "learning_rate"), smooth=False),
    Family("grad_norm", "gradient norm (before clipping)", lambda k: k == "grad_norm"),
)


@dataclass
class Series:
    """One metric of one split: steps, values, and optional interval bounds."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)


def _number(value: Any) -> float:
    try:
        return float(value)  # "nan" / "inf" strings come back as floats too
    except (TypeError, ValueError):
        return float("nan")


def collect(records: list[dict]) -> dict[tuple[str, str], Series]:
    """``{(split, metric): Series}`` of every numeric metric (interval bounds folded into their metric)."""
    series: dict[tuple[str, str], Series] = {}
    for record in records:
        split, step = str(record.get("split", "train")), record.get("step")
        if step is None:
            continue
        for key, value in record.items():
            if key in SKIPPED or key.endswith(("_ci_low", "_ci_high")) or isinstance(value, (dict, list, bool)):
                continue
            y = _number(value)
            if not math.isfinite(y):
                continue
            s = series.setdefault((split, key), Series())
            s.steps.append(int(step))
            s.values.append(y)
            s.low.append(_number(record.get(f"{key}_ci_low")))
            s.high.append(_number(record.get(f"{key}_ci_high")))
    return series


def group(series: dict[tuple[str, str], Series]) -> list[tuple[Family, dict[tuple[str, str], Series]]]:
    """Families in display order with their series; unclaimed metrics get a family each."""
    groups: list[tuple[Family, dict[tuple[str, str], Series]]] = []
    claimed: set[tuple[str, str]] = set()
    for family in FAMILIES:
        members = {k: v for k, v in series.items() if family.claims(k[1])}
        if members:
            groups.append((family, members))
            claimed.update(members)
    for key in sorted({k[1] for k in series if k not in claimed}):
        members = {k: v for k, v in series.items() if k[1] == key and k not in claimed}
        groups.append((Family(key, key, lambda name, key=key: name == key), members))
    return groups


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average m_t = α·m_{t−1} + (1 − α)·x_t, bias-corrected like Adam's moments."""
    if alpha <= 0:
        return list(values)
    out, m = [], 0.0
    for t, x in enumerate(values, start=1):
        m = alpha * m + (1 - alpha) * x
        out.append(m / (1 - alpha ** t))
    return out


def draw(ax: Any, family: Family, members: dict[tuple[str, str], Series], smooth: float, *,
         color: str | None = None, label: str | None = None) -> None:
    """Draw one family on ``ax``: training lines (raw + EMA), held-out markers with intervals.

    ``color`` / ``label`` draw every series of ``members`` in one colour under one name (one run of
    several, :func:`plot_compare`); by default each metric gets its own."""
    for index, ((split, key), s) in enumerate(sorted(members.items())):
        hue = color or f"C{index % 10}"
        name = label or key
        legend = name if split == "train" else f"{name} ({split})"
        if split == "train" and len(s.steps) > 1:
            if smooth > 0 and family.smooth:
                ax.plot(s.steps, s.values, color=hue, alpha=0.25, linewidth=1)
                ax.plot(s.steps, ema(s.values, smooth), color=hue, linewidth=1.8, label=legend)
            else:
                ax.plot(s.steps, s.values, color=hue, linewidth=1.5, label=legend)
        else:
            has_ci = all(math.isfinite(v) for v in s.low + s.high) and s.low
            if has_ci:
                below = [v - lo for v, lo in zip(s.values, s.low)]
                above = [hi - v for v, hi in zip(s.values, s.high)]
                ax.errorbar(s.steps, s.values, yerr=[below, above], color=hue, marker="o", capsize=3,
                            linestyle="--", linewidth=1, label=f"{legend}, 95% CI")
            else:
                ax.plot(s.steps, s.values, color=hue, marker="o", linestyle="--", linewidth=1, label=legend)
    ax.set_title(family.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if family.name == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend(fontsize=7)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, *, smooth: float = 0.6,
             title: str | None = None) -> list[Path]:
    """Write ``<family>.png`` for every metric family and ``curves.png`` (all families in a grid).

    Args:
        run_dir: a run folder holding ``metrics.jsonl``.
        out_dir: where the PNGs go (default ``<run_dir>/plots``).
        smooth: EMA factor for training curves (0 draws raw values only).
        title: the grid's title (default: the run folder's name).

    Returns:
        The written files, the grid last.

    Raises:
        PlotError: no ``metrics.jsonl`` or nothing numeric in it.
    """
    from alignkit.api import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise PlotError(f"{run_dir}: no metrics.jsonl here; pass a run folder written by alignkit train")
    records = read_metrics(run_dir)
    groups = group(collect(records))
    if not groups:
        raise PlotError(f"{run_dir / 'metrics.jsonl'}: no numeric metrics to plot ({len(records)} lines)")
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    written = []
    for family, members in groups:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, family, members, smooth)
        fig.tight_layout()
        path = out / f"{_file_name(family.name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (family, members) in zip(axes.flat, groups):
        draw(ax, family, members, smooth)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    _title(fig, title or run_dir.resolve().name, rows)
    grid = out / "curves.png"
    fig.savefig(grid, dpi=110)
    plt.close(fig)
    written.append(grid)
    return written


def plot_compare(run_dirs: list[str | Path], out_dir: str | Path | None = None, *, metrics: list[str] | None = None,
                 labels: list[str] | None = None, smooth: float = 0.6, title: str | None = None) -> Path:
    """Write ``compare.png``: one panel per metric, one colour per run (training EMA over its faint raw
    line, held-out values as markers with their 95% interval).

    Args:
        run_dirs: two or more run folders holding ``metrics.jsonl``.
        out_dir: where ``compare.png`` goes (default ``<first run>/plots``).
        metrics: the metrics to draw, in order (default: every metric all runs logged).
        labels: one legend label per run (default: the folders' names).
        smooth: EMA factor for training curves (0 draws raw values only).
        title: the figure's title.

    Raises:
        PlotError: a folder without metrics, labels that do not match the runs, or a metric no run logged.
    """
    from alignkit.api import read_metrics

    runs = [Path(r) for r in run_dirs]
    names = labels or [r.resolve().name for r in runs]
    if len(names) != len(runs):
        raise PlotError(f"--labels: {len(names)} labels for {len(runs)} runs")
    series = []
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise PlotError(f"{run}: no metrics.jsonl here; pass run folders written by alignkit train")
        series.append(collect(read_metrics(run)))
    logged = [{key for _, key in s} for s in series]
    wanted = metrics or sorted(set.intersection(*logged))
    missing = [m for m in wanted if not any(m in keys for keys in logged)]
    if missing or not wanted:
        raise PlotError(f"no run logged {', '.join(missing) or 'a metric common to all runs'}; "
                        f"metrics of the first run: {', '.join(sorted(logged[0]))}")
    plt = pyplot()
    columns = min(3, len(wanted))
    rows = math.ceil(len(wanted) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, wanted):
        for index, (name, run_series) in enumerate(zip(names, series)):
            members = {k: v for k, v in run_series.items() if k[1] == metric}
            family = Family(metric, metric, lambda key, metric=metric: key == metric)
            draw(ax, family, members, smooth, color=f"C{index % 10}", label=name)
    for ax in list(axes.flat)[len(wanted):]:
        ax.axis("off")
    _title(fig, title or " vs ".join(names), rows)
    out = Path(out_dir) if out_dir else runs[0] / "plots"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(fig: Any, title: str, rows: int) -> None:
    """A figure title above the grid's panels (not over the first row's panel titles)."""
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.6 * rows)))


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
