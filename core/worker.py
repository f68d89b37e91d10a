"""One training process of ``alignkit launch``: ``python -m alignkit.worker <run folder> [--resume]``.

Reads the config the launcher composed and saved (``<run>/config.yaml``, already resolved) and trains
it; ``--resume`` continues the run from its latest checkpoint, on the changed config the launcher
checked and left pending (``alignkit.runfolder``), which the main process records once built.
torchrun / accelerate set ``RANK``, ``WORLD_SIZE`` and the rendezvous; accelerate picks them up.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from .errors import AlignkitError, disk_full_as_error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in argv
    argv = [a for a in argv if a != "--resume"]
    if len(argv) != 1:
        print("usage: python -m alignkit.worker <run folder> [--resume]  (started by 'alignkit launch')",
              file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    rank = os.environ.get("RANK", "0")
    try:
        from .compose import setup
        from .loop import Trainer
        from .runfolder import commit_pending, run_config

        setup()
        cfg = run_config(run_dir, resume=resume)
        with disk_full_as_error(run_dir):
            trainer = Trainer(cfg, run_dir)
            if rank == "0":
                commit_pending(run_dir)  # a resume's config changes: recorded once the run is built
            result = trainer.fit()
    except AlignkitError as exc:
        if os.environ.get("ALIGNKIT_DEBUG"):
            traceback.print_exc()
        print(f"alignkit: error: [rank {rank}] {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    if rank == "0":
        from .cli import print_result

        print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
