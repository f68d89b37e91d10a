"""``alignkit plot <run dir> [--out DIR] [--smooth A]``: PNG training curves of a run.

``alignkit plot <run> <run> ... [--metrics a,b] [--labels x,y]``: one figure comparing runs
(``compare.png``), a panel per metric and a colour per run.
"""

from __future__ import annotations

import argparse

from .curves import plot_compare, plot_run


def main(argv: list[str]) -> int:
    """Write PNG curves (loss, reward, KL, accuracy, learning rate, ...) of a run's metrics.jsonl."""
    parser = argparse.ArgumentParser(prog="alignkit plot", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir", help="a run folder (holds metrics.jsonl); "
                        "several: one figure comparing them")
    parser.add_argument("--out", help="output folder (default: <run dir>/plots)")
    parser.add_argument("--smooth", type=float, default=0.6, help="EMA factor for training curves, 0..1 (0: raw)")
    parser.add_argument("--title", help="title of the grid figure (default: the run folder's name)")
    parser.add_argument("--metrics", help="comma-separated metrics to compare (default: every metric all runs logged)")
    parser.add_argument("--labels", help="comma-separated legend labels, one per run (default: folder names)")
    args = parser.parse_args(argv)
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: must be in [0, 1)")
    if len(args.run_dirs) > 1:
        split = lambda text: [part.strip() for part in text.split(",") if part.strip()] if text else None  # noqa: E731
        path = plot_compare(args.run_dirs, args.out, metrics=split(args.metrics), labels=split(args.labels),
                            smooth=args.smooth, title=args.title)
        print(f"alignkit: wrote {path}")
        return 0
    written = plot_run(args.run_dirs[0], args.out, smooth=args.smooth, title=args.title)
    print(f"alignkit: wrote {len(written)} plots to {written[-1].parent}")
    for path in written:
        print(f"  {path}")
    return 0
