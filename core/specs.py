"""What plugins register: one small frozen dataclass per kind of thing.

Every spec has a ``name`` (what users type on the command line), a ``summary`` (shown by
``alignkit ls``; defaults to the first docstring line of the callable) and, where it is configured by
a Hydra group, an optional dataclass ``schema`` that types that group's node so that a wrong value
(``method.beta=abc``) fails with a typed error naming the key.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

RECORD_KINDS = ("tokens", "pairs", "ranked", "prompts")


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass(frozen=True)
class _Spec:
    name: str

    @property
    def kind(self) -> str:
        return type(self).KIND  # type: ignore[attr-defined]

    def describe(self) -> str:
        summary = getattr(self, "summary", "")
        if summary:
            return summary
        target = getattr(self, "build", None) or getattr(self, "fn", None) or getattr(self, "parse", None)
        return _first_line(target) if target is not None else ""


@dataclass(frozen=True)
class MethodSpec(_Spec):
    """A training method: how to build its objective and what it consumes.

    Attributes:
        name: ``method=<name>``.
        build: ``build(context) -> Objective``; ``context`` is an :class:`alignkit.context.RunContext`.
        consumes: record kind the objective trains on (one of ``RECORD_KINDS``), or a function of
            the run config returning one (a method whose data depends on its loss, e.g. reward
            models: pairs for Bradley-Terry, ranked lists for K-wise).
        needs_reference: load a frozen copy of the initial policy as ``context.reference``.
        schema: dataclass typing ``cfg.method`` (must have a ``name: str`` field).
        summary: one line for ``alignkit ls methods``.
        condition: optional ``condition(cfg, prompt, values, *, fill_defaults) -> prompt``: how the
            method writes per-example conditioning values into a prompt (messages). Dataset rollouts
            apply it to every record that carries ``attributes`` (``fill_defaults=False``), and
            ``alignkit chat --attributes k=v,...`` to the user's prompt (``fill_defaults=True``, values
            as strings), so training and inference condition the same way (SteerLM's attribute
            string). Raise ``ValueError`` for a bad value.
    """

    KIND = "methods"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    consumes: str | Callable[[Any], str] = "tokens"
    needs_reference: bool = False
    schema: type | None = None
    summary: str = ""
    condition: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not callable(self.consumes) and self.consumes not in RECORD_KINDS:
            raise ValueError(f"method '{self.name}': consumes={self.consumes!r}, expected one of {RECORD_KINDS}")

    def kind_for(self, cfg: Any) -> str:
        """The record kind this method consumes under run config ``cfg``."""
        kind = self.consumes(cfg) if callable(self.consumes) else self.consumes
        if kind not in RECORD_KINDS:
            raise ValueError(f"method '{self.name}' asked for records of kind {kind!r}; expected one of {RECORD_KINDS}")
        return kind


@dataclass(frozen=True)
class LossSpec(_Spec):
    """A pure loss function on tensors, exposed as ``alignkit.losses.<name>``."""

    KIND = "losses"
    fn: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""


@dataclass(frozen=True)
class RolloutSpec(_Spec):
    """Where batches come from: ``build(context, cfg.rollout) -> Rollout``."""

    KIND = "rollouts"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""


@dataclass(frozen=True)
class ScorerSpec(_Spec):
    """What completions are worth: ``build(context, cfg.scorer) -> Scorer``."""

    KIND = "scorers"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""


@dataclass(frozen=True)
class DataFormatSpec(_Spec):
    """How one raw row becomes a record: ``parse(row) -> dict`` of kind ``produces``.

    Attributes:
        parse: raises ``ValueError`` with a short reason for a bad row.
        produces: record kind (one of ``RECORD_KINDS``).
        required: top-level fields a row must have (checked before ``parse``, for clear errors).
    """

    KIND = "data_formats"
    parse: Callable[[dict], dict] = None  # type: ignore[assignment]
    produces: str = "tokens"
    required: tuple[str, ...] = field(default_factory=tuple)
    summary: str = ""


@dataclass(frozen=True)
class CommandSpec(_Spec):
    """An ``alignkit <name>`` sub-command: ``run(argv) -> exit code``."""

    KIND = "commands"
    run: Callable[[list[str]], int] = None  # type: ignore[assignment]
    help: str = ""
    summary: str = ""

    def describe(self) -> str:
        return self.summary or self.help or _first_line(self.run)


SPEC_TYPES: dict[str, type] = {
    cls.KIND: cls for cls in (MethodSpec, LossSpec, RolloutSpec, ScorerSpec, DataFormatSpec, CommandSpec)
}
