"""``alignkit train --help``: what alignkit is and the config groups a user chooses from.

Hydra's own application help starts with its banner and lists every config group it can see,
the internal ``schema/*`` groups (dataclass schemas of the registered specs) included. This help is
ours: a short statement of what alignkit does, then one entry per user-facing group with the options
that group really has (read from Hydra's config search path, so plugin configs are listed too), the
current choice marked. Hydra's flags stay one flag away: ``alignkit train --hydra-help``.
"""

from __future__ import annotations

import textwrap
from typing import Iterable

from .errors import ConfigError

#: Groups Hydra sees that users do not choose from: dataclass schemas and Hydra's own settings.
INTERNAL_GROUPS = ("schema", "hydra")

#: What each user-facing group decides, in the order the help lists them; other groups follow.
GROUP_HELP: dict[str, str] = {
    "method": "the objective (and its defaults for the groups below); alignkit ls methods",
    "loss": "the loss variant of the method; alignkit ls losses",
    "model": "the policy: a bundled model, or model.path=<local HF folder>",
    "data": "the training data: a bundled set, or data.path=<your file> (format inferred)",
    "rollout": "where batches come from: the dataset, or completions sampled from the policy",
    "scorer": "what completions are worth (online methods); alignkit ls scorers",
    "trainer": "steps, batch, optimizer, schedule, eval/save cadence, multi-process strategy",
    "probe": "answers to fixed everyday prompts before/after training, measured for refusals and loops",
    "experiment": "a whole recipe (a demonstration run) that sets the groups above",
}

ABOUT = ("alignkit is a plugin registry of LLM alignment methods (SFT, DPO, reward models, PPO, REINFORCE, "
         "GRPO, SteerLM, ...). Pick a method, a model and data; one generic training loop trains it and "
         "writes a run folder: its resolved config, metrics, checkpoints and final model.")

USAGE = ("usage: alignkit train [group=option ...] [key=value ...]\n"
         "       alignkit train resume=<run folder> [key=value ...]")

EXAMPLES = ("alignkit train method=dpo model=tiny trainer.max_steps=2",
            "alignkit train method=dpo data.path=pairs.jsonl",
            "alignkit train experiment=dpo_hh")

MORE = (("alignkit train --cfg job [overrides]", "print the composed config: every key and its value"),
        ("alignkit ls methods|losses|scorers|...", "what each registered name does"),
        ("alignkit train --hydra-help", "Hydra's own flags (-m multirun, --cfg, --info, ...)"))

WIDTH = 100


def config_groups() -> dict[str, list[str]]:
    """``{group: [option, ...]}`` of every user-facing top-level config group Hydra can compose."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from .compose import CONFIG_MODULE, setup

    setup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            loader = GlobalHydra.instance().config_loader()
            return {group: sorted(loader.get_group_options(group)) for group in loader.list_groups("")
                    if group not in INTERNAL_GROUPS}
    finally:
        GlobalHydra.instance().clear()


def ordered(groups: Iterable[str]) -> list[str]:
    """The known groups in :data:`GROUP_HELP`'s order, then any other (plugin) group alphabetically."""
    groups = set(groups)
    return [g for g in GROUP_HELP if g in groups] + sorted(groups - set(GROUP_HELP))


def current_choices(overrides: list[str]) -> tuple[dict[str, str | None], str | None]:
    """The option each group has with ``overrides`` applied, and why the overrides were ignored (if they were).

    A bad override does not hide the help: the defaults are shown, with the error as a note.
    """
    from .compose import compose

    def choices(args: list[str]) -> dict[str, str | None]:
        return dict(compose(args, return_hydra_config=True).hydra.runtime.choices)

    try:
        return choices(overrides), None
    except ConfigError as exc:
        if not overrides:
            raise
        return choices([]), str(exc)


def group_entry(group: str, options: list[str], chosen: str | None) -> list[str]:
    """Two or more lines: ``group  what it decides`` and its options, the chosen one marked ``*``."""
    head = f"  {group:<11} {GROUP_HELP.get(group, '')}".rstrip()
    names = "  ".join(f"{o}*" if o == chosen else o for o in options)
    if chosen is None:
        names += "  (none chosen)"
    body = textwrap.wrap(names, width=WIDTH, initial_indent=" " * 14, subsequent_indent=" " * 14,
                         break_on_hyphens=False)
    return [head, *body]


def train_help(overrides: list[str] | None = None) -> str:
    """The text of ``alignkit train --help`` (``overrides``: the other arguments given, e.g. ``method=dpo``)."""
    overrides = [a for a in (overrides or []) if not a.startswith("-")]
    groups = config_groups()
    chosen, note = current_choices(overrides)
    lines = ["alignkit train: align a language model with one of alignkit's methods.", "",
             *textwrap.wrap(ABOUT, width=WIDTH), "", USAGE, "",
             "Config groups: choose an option of each with group=option (* marks the current choice):"]
    for group in ordered(groups):
        lines += group_entry(group, groups[group], chosen.get(group))
    if note:
        lines.append(f"  (shown without your overrides: {note})")
    lines += ["", "Any single key can be set as well: trainer.max_steps=10 data.path=pairs.jsonl method.beta=0.2", "",
              "Examples:", *(f"  {e}" for e in EXAMPLES), "", "More:"]
    width = max(len(command) for command, _ in MORE)
    lines += [f"  {command:<{width}}  {what}" for command, what in MORE]
    return "\n".join(lines)
