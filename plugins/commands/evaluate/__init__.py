"""Built-in commands ``alignkit eval`` (rm | winrate | elo) and ``alignkit generate``."""

from __future__ import annotations

from alignkit.api import CommandSpec, hookimpl

from . import commands


@hookimpl
def register_commands(register):
    register(CommandSpec(name="eval", run=commands.eval_main,
                         help="rm accuracy | winrate (+ length-controlled) vs a baseline | elo ratings of models"))
    register(CommandSpec(name="generate", run=commands.generate_main,
                         help="answers of any model or checkpoint to a prompt file, as JSONL"))
