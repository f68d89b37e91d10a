"""Built-in command ``alignkit data``: ``alignkit data inspect <path>``, what a data file reads as."""

from __future__ import annotations

from alignkit.api import CommandSpec, hookimpl

from . import command


@hookimpl
def register_commands(register):
    register(CommandSpec(name="data", run=command.main,
                         help="inspect a data file: inferred format, record kind, counts, a rendered example, "
                              "token lengths"))
