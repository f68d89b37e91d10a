"""User-facing errors: one line naming the thing, the place and the fix.

The CLI prints ``AlignkitError`` messages without a traceback (unless ``ALIGNKIT_DEBUG=1``) and exits
with the error's ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""``OSError.errno`` values that mean "no room to write": a full disk, a quota, a file-size limit."""

_SINGULAR = {"methods": "method", "losses": "loss", "rollouts": "rollout", "scorers": "scorer",
             "data_formats": "data format", "commands": "command"}


def singular(kind: str) -> str:
    """``losses`` -> ``loss``, ``data_formats`` -> ``data format``."""
    return _SINGULAR.get(kind, kind)


class AlignkitError(Exception):
    """An error caused by user input (config, data, model path, plugin); printed as one line."""

    exit_code = 2


class ConfigError(AlignkitError):
    """A config key, value or group option is wrong."""


class UnknownNameError(ConfigError):
    """A method / loss / rollout / scorer / data format name is not registered."""

    def __init__(self, kind: str, name: str, available: list[str], where: str = "") -> None:
        self.kind, self.name, self.available = kind, name, sorted(available)
        place = f" ({where})" if where else ""
        listing = ", ".join(self.available) or "none"
        super().__init__(f"unknown {singular(kind)} '{name}'{place}; available: {listing}")


class DuplicateNameError(AlignkitError):
    """Two plugins registered the same name for the same kind."""


class DataError(AlignkitError):
    """A data file is missing, malformed, or has rows of the wrong shape."""


class ModelError(AlignkitError):
    """A model path is missing or does not hold a loadable causal LM."""


class CheckpointError(AlignkitError):
    """A checkpoint or resume directory is missing, damaged, or from another run."""


class TrainingError(AlignkitError):
    """Training cannot continue (e.g. a non-finite loss)."""


def disk_full(exc: OSError, run_dir: object) -> TrainingError | None:
    """A one-line error for a write that found no room (``DISK_FULL``), or None for any other ``OSError``."""
    if exc.errno not in DISK_FULL:
        return None
    return TrainingError(f"no room left to write {exc.filename or 'in ' + str(run_dir)} ({exc.strerror}); "
                         f"intact checkpoints (if any) are in {run_dir}/checkpoints")


@contextlib.contextmanager
def disk_full_as_error(run_dir: object) -> Iterator[None]:
    """Inside, an ``OSError`` meaning "no room to write" becomes :func:`disk_full`'s one-line error."""
    try:
        yield
    except OSError as exc:
        error = disk_full(exc, run_dir)
        if error is None:
            raise
        raise error from exc
