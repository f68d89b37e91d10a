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

RECORD_KINDS = ("tokens", "pairs", "ranked", "prompts", "unpaired")


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
        schema: dataclass typing ``cfg.method`` (must have a ``name: str`` field).
        requires: other registered names this method looks up by name, as ``"<table>:<name>"``
            (``"methods:sft"``); checked when plugins load (a missing one disables this method).
        loss_family: the family of the losses ``loss=`` may select for this method (see
            :class:`LossSpec`); None: the method takes no ``loss=``.
        term_options: overrides that each add a loss term (``"method.sft_weight=1"``); the
            conformance kit (``alignkit.testing.check_method``) checks batch x accumulation
            invariance with each of them, as it does for the method alone.
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
    schema: type | None = None
    summary: str = ""
    condition: Callable[..., Any] | None = None
    term_options: tuple[str, ...] = ()
    loss_family: str | None = None
    requires: tuple[str, ...] = ()

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
    """A selectable loss (``loss=<name>``): a pure function on tensors, exposed as ``alignkit.losses.<name>``.

    Only losses a user can pick are registered; helper math (GAE, KL estimators, advantage
    estimators) is plain functions of :mod:`alignkit.rl` or of the method's package.

    Attributes:
        name: ``loss=<name>``; a ``loss/<name>.yaml`` must exist on the config path.
        fn: the loss; called by the methods of its ``family`` as documented there.
        schema: dataclass typing ``cfg.loss``: its fields other than ``name`` are the loss's options,
            passed to ``fn`` as keyword arguments (:meth:`options`).
        family: the kind of loss, which decides the methods that take it (``MethodSpec.loss_family``):
            ``preference`` (DPO-style, on policy/reference log-probs of pairs), ``reward-model`` (a
            reward model's scores), ...
        consumes: the record kind the loss trains on when a method's data follows its loss (reward
            models: ``pairs`` for Bradley-Terry, ``ranked`` for Plackett-Luce, ``tokens`` for MSE).
        takes: per-example inputs the method passes besides the loss's own options, when it has them
            (``beta``, ``soft_labels``, ``margin``).
        aliases: short names that select it too (each with its own ``loss/<alias>.yaml``).
        summary: one line for ``alignkit ls losses``.
    """

    KIND = "losses"
    fn: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""
    family: str = ""
    consumes: str | None = None
    takes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.consumes is not None and self.consumes not in RECORD_KINDS:
            raise ValueError(f"loss '{self.name}': consumes={self.consumes!r}, expected one of {RECORD_KINDS}")

    def options(self, loss_cfg: Any) -> dict[str, Any]:
        """The configured options of this loss: every field of ``cfg.loss`` but ``name``."""
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(loss_cfg, resolve=True) if OmegaConf.is_config(loss_cfg) else dict(loss_cfg)
        return {k: v for k, v in values.items() if k != "name"}


@dataclass(frozen=True)
class AdvantageSpec(_Spec):
    """An advantage estimator for online methods (``method.advantage=<name>``): rewards -> advantages.

    Attributes:
        name: what ``method.advantage`` (``method.baseline`` for ``reinforce``) selects.
        fn: ``fn(rewards (P, k), **options) -> advantages (P, k)``: P prompts, k completions each, one
            reward per completion (sample-major rows, as rollouts lay them out); pure, no state.
        needs_groups: compares the k completions of a prompt (k >= 2 required).
        takes: method options passed to ``fn`` when the method has them (``scale_by_std``).
        summary: one line for ``alignkit ls advantages``.
    """

    KIND = "advantages"
    fn: Callable[..., Any] = None  # type: ignore[assignment]
    needs_groups: bool = False
    takes: tuple[str, ...] = ()
    summary: str = ""


@dataclass(frozen=True)
class RolloutSpec(_Spec):
    """Where batches come from: ``build(context, cfg.rollout) -> Rollout``.

    ``requires``: other registered names it looks up by name (``"rollouts:dataset"``), checked at load.
    """

    KIND = "rollouts"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineSpec(_Spec):
    """An inference engine behind ``rollout=generate`` (``rollout.engine=<name>``): ``build(context, options,
    demand) -> Engine`` (:class:`alignkit.engines.Engine`).

    Attributes:
        name: what ``rollout.engine`` selects (``hf``, ``vllm``, a plugin's ``sglang``, ...).
        build: ``build(ctx, options, demand) -> Engine``; ``options`` is ``rollout.engine_options`` typed by
            ``schema``; ``demand`` (:class:`alignkit.engines.EngineDemand`) the most rows and the longest
            sequence one call will ask for (to size caches).
        schema: dataclass of the engine's options (an unknown or mistyped key is a one-line error).
        exact: samples with the training code's own model (no copy of the weights to keep in sync).
        summary: one line for ``alignkit ls engines``.
    """

    KIND = "engines"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    exact: bool = False
    summary: str = ""


@dataclass(frozen=True)
class ISCorrectionSpec(_Spec):
    """An importance-sampling correction of the train-inference mismatch (``method.is_correction=<name>``).

    Attributes:
        name: what ``method.is_correction`` selects.
        fn: ``fn(log_ratio (N, T), mask (N, T), *, cap, level) -> weights (N, T)``: ``log_ratio`` is
            log π_trainer(y_t) − log π_sampler(y_t) of the sampled tokens, ``level`` ``token`` or
            ``sequence``; pure, no gradient. The weights multiply each token's policy-gradient term.
        summary: one line for ``alignkit ls is_corrections``.
    """

    KIND = "is_corrections"
    fn: Callable[..., Any] = None  # type: ignore[assignment]
    summary: str = ""


@dataclass(frozen=True)
class ScorerSpec(_Spec):
    """What completions are worth: ``build(context, cfg.scorer) -> Scorer``.

    ``requires``: other registered names it looks up by name, checked at load.
    """

    KIND = "scorers"
    build: Callable[..., Any] = None  # type: ignore[assignment]
    schema: type | None = None
    summary: str = ""
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataFormatSpec(_Spec):
    """How one raw row becomes a record: ``parse(row) -> dict`` of kind ``produces``.

    ``data.format: auto`` (or null) infers the format of a file from its first rows
    (:func:`alignkit.data.infer_format`): every registered format whose :meth:`matches` accepts them
    is a candidate, and the one that reads the most of the rows' fields (:meth:`reads`) wins; a tie
    or no candidate is an error listing the fields found and the formats that would take them.

    Attributes:
        parse: raises ``ValueError`` with a short reason for a bad row.
        produces: record kind (one of ``RECORD_KINDS``).
        required: top-level fields a row must have (checked before ``parse``, for clear errors).
        summary: one line for ``alignkit ls data_formats``.
        keys: every top-level field the format reads when present (``required`` included or not):
            what ranks candidates in inference, so ``{"prompt", "chosen", "rejected"}`` picks
            ``pairwise`` over ``prompts``.
        detect: ``detect(row) -> bool``, whether a row looks like this format, for formats whose
            fields alone do not say it (HH-RLHF transcripts, conversations without a prompt field).
            Default: the row has every ``required`` field. A format with neither never matches: it
            is used only when named (``data.format=<name>``).
    """

    KIND = "data_formats"
    parse: Callable[[dict], dict] = None  # type: ignore[assignment]
    produces: str = "tokens"
    required: tuple[str, ...] = field(default_factory=tuple)
    summary: str = ""
    keys: tuple[str, ...] = field(default_factory=tuple)
    detect: Callable[[dict], bool] | None = None

    def __post_init__(self) -> None:
        if self.produces not in RECORD_KINDS:
            raise ValueError(f"data format '{self.name}': produces={self.produces!r}, expected one of {RECORD_KINDS}")

    def matches(self, row: dict) -> bool:
        """Whether ``row`` looks like a row of this format (for format inference)."""
        if self.detect is not None:
            try:
                return bool(self.detect(row))
            except (TypeError, ValueError, KeyError, AttributeError, IndexError):
                return False
        return bool(self.required) and all(key in row for key in self.required)

    def reads(self, row: dict) -> int:
        """How many of ``row``'s fields this format reads (ranks the candidates of format inference)."""
        return len((set(self.required) | set(self.keys)) & set(row))


@dataclass(frozen=True)
class CommandSpec(_Spec):
    """An ``alignkit <name>`` sub-command: ``run(argv) -> exit code``."""

    KIND = "commands"
    run: Callable[[list[str]], int] = None  # type: ignore[assignment]
    help: str = ""
    summary: str = ""
    requires: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.summary or self.help or _first_line(self.run)


SPEC_TYPES: dict[str, type] = {
    cls.KIND: cls for cls in (MethodSpec, LossSpec, AdvantageSpec, RolloutSpec, EngineSpec, ISCorrectionSpec,
                              ScorerSpec, DataFormatSpec, CommandSpec)
}
