"""``alignkit plot <run dir> [--out DIR] [--smooth A]``: PNG training curves of a run."""

from __future__ import annotations

import argparse

from .curves import plot_run


def main(argv: list[str]) -> int:
    """Write PNG curves (loss, reward, KL, accuracy, learning rate, ...) of a run's metrics.jsonl."""
    parser = argparse.ArgumentParser(prog="alignkit plot", description=__doc__)
    parser.add_argument("run_dir", help="a run folder (holds metrics.jsonl)")
    parser.add_argument("--out", help="output folder (default: <run dir>/plots)")
    parser.add_argument("--smooth", type=float, default=0.6, help="EMA factor for training curves, 0..1 (0: raw)")
    parser.add_argument("--title", help="title of the grid figure (default: the run folder's name)")
    args = parser.parse_args(argv)
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: must be in [0, 1)")
    written = plot_run(args.run_dir, args.out, smooth=args.smooth, title=args.title)
    print(f"alignkit: wrote {len(written)} plots to {written[-1].parent}")
    for path in written:
        print(f"  {path}")
    return 0
