"""Built-in command ``alignkit plot``: PNG training curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

from alignkit.hookspecs import hookimpl
from alignkit.specs import CommandSpec

from . import command


@hookimpl
def register_commands(register):
    register(CommandSpec(name="plot", run=command.main,
                         help="PNG curves (loss, reward, KL, accuracy, lr, ...) of a run's metrics.jsonl"))
