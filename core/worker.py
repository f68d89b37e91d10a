"""One training process of ``alignkit launch``: ``python -m alignkit.worker <run folder>``.

Reads the config the launcher composed and saved (``<run>/config.yaml``, already resolved) and trains
it. torchrun / accelerate set ``RANK``, ``WORLD_SIZE`` and the rendezvous; accelerate picks them up.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from .errors import AlignkitError, disk_full_as_error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m alignkit.worker <run folder>  (started by 'alignkit launch')", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    rank = os.environ.get("RANK", "0")
    try:
        from omegaconf import OmegaConf

        from .compose import setup
        from .errors import ConfigError
        from .loop import Trainer

        config = run_dir / "config.yaml"
        if not config.exists():
            raise ConfigError(f"{config}: missing; start workers with 'alignkit launch', which writes it")
        setup()
        cfg = OmegaConf.load(config)
        with disk_full_as_error(run_dir):
            result = Trainer(cfg, run_dir).fit()
    except AlignkitError as exc:
        if os.environ.get("ALIGNKIT_DEBUG"):
            traceback.print_exc()
        print(f"alignkit: error: [rank {rank}] {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    if rank == "0":
        from .cli import _print_result

        _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
