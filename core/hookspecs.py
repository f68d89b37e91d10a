"""Hook specifications: the whole contract between alignkit and its plugins.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose names are the
hooks below. Every hook is called exactly once, at start-up, never per training step. A plugin
announces itself with an entry point in the ``alignkit`` group, named after its distribution::

    [project.entry-points.alignkit]
    alignkit-simpo = "alignkit_simpo.plugin"

Built-in methods are plugins too: they are registered through these same hooks.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "alignkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_methods(register: Callable) -> None:
    """Register training methods (``method=<name>`` on the command line).

    Call ``register(MethodSpec(...))`` once per method. A :class:`alignkit.api.MethodSpec` names
    the method, the function that builds its :class:`alignkit.api.Objective` (``weight`` +
    ``__call__``), the record kind it consumes (``tokens``, ``pairs``, ``ranked``, ``prompts``), an
    optional dataclass ``schema`` that types ``cfg.method``, the ``loss_family`` its ``loss=`` takes,
    the ``term_options`` that add loss terms (checked for accumulation invariance by
    ``alignkit.testing.check_method``) and the registered names it ``requires``. Ship the method's
    config as ``method/<name>.yaml`` in a config dir (see :func:`register_config_dirs`).

    Example::

        @hookimpl
        def register_methods(register):
            register(MethodSpec(name="simpo", build=build_objective, consumes="pairs",
                                schema=SimPOConfig))
    """


@hookspec
def register_losses(register: Callable) -> None:
    """Register selectable losses (``loss=<name>``), importable afterwards as ``alignkit.losses.<name>``.

    Call ``register(LossSpec(name=..., fn=..., family=...))``. ``fn`` is a pure function on tensors
    (no model, no config object); its docstring should give the paper, the formula and the tensor
    shapes, because ``alignkit ls losses`` shows its first line. ``family`` decides which methods take
    it (their ``MethodSpec.loss_family``): it names a calling convention, the arguments those methods
    pass, so reuse a family only to be called that way. Ship ``loss/<name>.yaml`` (and one per alias)
    in a config dir. Helper math that no user selects is not registered: it is a plain function.
    """


@hookspec
def register_advantages(register: Callable) -> None:
    """Register advantage estimators of online methods (``method.advantage=<name>``).

    Call ``register(AdvantageSpec(name=..., fn=...))``. ``fn(rewards, **options)`` maps the rewards
    (P, k) of P prompts with k sampled completions each to advantages (P, k), a pure function;
    ``needs_groups=True`` when it compares a prompt's k completions. ``alignkit ls advantages`` lists
    them; ``method=grpo`` and ``method=reinforce`` take any of them by name.
    """


@hookspec
def register_rollouts(register: Callable) -> None:
    """Register rollouts: where training batches come from (``rollout=<name>``).

    Call ``register(RolloutSpec(name=..., build=...))``; ``build(context, cfg.rollout)`` returns an
    object following :class:`alignkit.api.Rollout`.
    """


@hookspec
def register_engines(register: Callable) -> None:
    """Register inference engines that sample completions for ``rollout=generate`` (``rollout.engine=<name>``).

    Call ``register(EngineSpec(name=..., build=..., schema=...))``; ``build(context, options, demand)``
    returns an object following :class:`alignkit.api.Engine` (generate, sync the policy's weights, score
    a fixed continuation); ``demand`` (:class:`alignkit.api.EngineDemand`) is the most rows and the
    longest sequence one call asks for, to size caches. ``hf`` (the exact reference) and ``vllm`` are built in; an SGLang or remote
    server engine is a plugin of this hook.
    """


@hookspec
def register_is_corrections(register: Callable) -> None:
    """Register importance-sampling corrections of the train-inference mismatch (``method.is_correction``).

    Call ``register(ISCorrectionSpec(name=..., fn=...))``; ``fn(log_ratio, mask, *, cap, level) -> weights``
    (see :class:`alignkit.api.ISCorrectionSpec`). Every online method (``ppo``, ``reinforce``, ``grpo``)
    takes any of them by name.
    """


@hookspec
def register_scorers(register: Callable) -> None:
    """Register scorers: what a completion is worth (``scorer=<name>``).

    Call ``register(ScorerSpec(name=..., build=...))``; ``build(context, cfg.scorer)`` returns an
    object following :class:`alignkit.api.Scorer` that maps trajectories to rewards (B,) or
    (B, A).
    """


@hookspec
def register_data_formats(register: Callable) -> None:
    """Register data formats: how a raw row becomes a record (``data.format=<name>``).

    Call ``register(DataFormatSpec(name=..., parse=..., produces=...))``. ``parse(row)`` takes one
    raw row (a dict) and returns a record of the kind ``produces`` (``tokens``: prompt/completion
    messages; ``pairs``: prompt/chosen/rejected; ``ranked``: prompt/completions best first;
    ``prompts``: prompt only). Raise ``ValueError`` with a short reason for a bad row: the loader adds
    the file and row number.
    """


@hookspec
def register_config_dirs() -> str | list[str] | None:
    """Return the plugin's Hydra config folders as ``pkg://`` URLs, e.g. ``"pkg://alignkit_foo.conf"``.

    Each folder is appended to Hydra's search path, so its ``method/<name>.yaml``,
    ``scorer/<name>.yaml`` ... become options of the config groups.
    """


@hookspec
def register_commands(register: Callable) -> None:
    """Register ``alignkit <name>`` sub-commands.

    Call ``register(CommandSpec(name=..., run=..., help=...))``; ``run(argv)`` receives the remaining
    command-line arguments and returns the exit code.
    """


HOOK_NAMES = (
    "register_methods",
    "register_losses",
    "register_advantages",
    "register_rollouts",
    "register_engines",
    "register_is_corrections",
    "register_scorers",
    "register_data_formats",
    "register_config_dirs",
    "register_commands",
)
