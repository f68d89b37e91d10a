"""``scorer=function``: a Python callable ``(prompts, completions, **kwargs) -> list[float]``.

For verifiable rewards (length limits, required words, unit tests, exact answers)::

    alignkit train method=reinforce scorer=function scorer.fn=my_pkg.rewards:brevity \
        '+scorer.kwargs={max_words: 20}'

The callable receives the prompt texts (last user message) and the decoded completions, one each
per row (a prompt with k samples appears k times), and returns one finite number per completion.
The prompts' other data columns arrive as keyword lists aligned with the rows (TRL's convention): a
data row ``{"prompt": ..., "answer": "56"}`` gives ``answer=[..., "56", ...]``, so a checker is
``def check(prompts, completions, answer, **kwargs)`` (a function without ``**kwargs`` gets only the
columns it names). Columns named like ``scorer.kwargs`` entries
are an error (say which wins by renaming one with ``data.columns``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from alignkit.api import ConfigError, RolloutBatch, RunContext, as_rewards, load_callable


@dataclass
class FunctionScorerConfig:
    """``scorer=function`` options.

    Attributes:
        name: ``function``.
        fn: ``package.module:function`` (importable from the run's Python path).
        kwargs: extra keyword arguments passed on every call (e.g. ``{max_words: 20}``).
    """

    name: str = "function"
    fn: str = "???"
    kwargs: dict[str, Any] = field(default_factory=dict)


class FunctionScorer:
    """Calls ``fn(prompts, completions, **columns, **kwargs)`` and checks its answer.

    The columns passed are those ``fn`` can take: all of them when it has ``**kwargs``, else the ones
    it names as parameters (so ``def brevity(prompts, completions, max_words=8)`` keeps working on
    data that carries an ``answer`` column)."""

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
        self.fn, self.kwargs, self.label = fn, kwargs, label
        self.takes = accepted_names(fn)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        completions = list(batch.completions)
        columns = column_lists(batch.columns, self.kwargs, self.label, self.takes)
        values = self.fn(list(batch.prompt_text), completions, **columns, **self.kwargs)
        return as_rewards(values, len(completions), self.label)  # (N,)


def accepted_names(fn: Callable[..., Any]) -> Optional[set[str]]:
    """The keyword names ``fn`` accepts, or None when it takes any (``**kwargs``, or no signature to read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def column_lists(columns: list[dict[str, Any]], kwargs: dict[str, Any], label: str,
                 takes: Optional[set[str]] = None) -> dict[str, list[Any]]:
    """The rows' data columns as ``{name: [value of row 0, row 1, ...]}`` (None where a row lacks one),
    only those named in ``takes`` when it is given."""
    names = sorted({name for row in columns for name in row if takes is None or name in takes})
    clash = [name for name in names if name in kwargs or name in ("prompts", "completions")]
    if clash:
        raise ConfigError(f"{label}: the data's column(s) {clash} clash with the function's arguments; rename "
                          f"them with data.columns={{{clash[0]}: ...}} or drop them from scorer.kwargs")
    return {name: [row.get(name) for row in columns] for name in names}


def build(ctx: RunContext, cfg: Any) -> FunctionScorer:
    """Rewards from a Python function ``(prompts, completions, **columns) -> list[float]`` (scorer.fn=mod:fn)."""
    if OmegaConf.is_missing(cfg, "fn") or not cfg.fn:
        raise ConfigError("scorer=function needs scorer.fn=<package.module:function>")
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if cfg.get("kwargs") is not None else {}
    return FunctionScorer(load_callable(cfg.fn), dict(kwargs), f"scorer 'function' (fn={cfg.fn})")
