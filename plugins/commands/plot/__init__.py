"""Built-in command ``alignkit plot``: PNG training curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

from alignkit.api import CommandSpec, hookimpl

from . import command


@hookimpl
def register_commands(register):
    register(CommandSpec(name="plot", run=command.main,
                         help="PNG curves (loss, reward, KL, accuracy, lr, ...) of a run's metrics.jsonl"))
