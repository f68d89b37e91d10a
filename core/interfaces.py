"""The contracts every method is built from: rollout -> score -> update.

They are ``Protocol``s, not base classes: any object with the right methods fits.

- :class:`Rollout` — where batches come from: a dataset reader (offline methods) or a generator
  sampling completions from the policy (online methods).
- :class:`Scorer` — what completions are worth: ``(batch) -> rewards`` of shape (B,) or (B, A).
- :class:`Objective` — how the policy learns: ``weight(batch)`` (how many units its loss averages
  over) and ``(batch) -> LossOutput``. Its optional capabilities are small protocols of their own
  (:class:`Stateful`, :class:`HasExtraParameters`, :class:`Evaluates`, :class:`PlansUpdates`,
  :class:`SavesExtras`), resolved once per run by :class:`Capabilities`.

Batches are the typed dataclasses of :mod:`alignkit.batches` (``TokenBatch``, ``PairBatch``,
``RankedBatch``, ``PromptBatch``, ``RolloutBatch``).

Gradient accumulation and several processes (the loss contract)
---------------------------------------------------------------
A loss may add terms measured in different units (DPO's pair loss plus an NLL over chosen tokens;
a reward model's pair loss plus an LM regulariser). Each term must be the mean over the *whole global
batch* (every micro-batch of the optimizer step, on every process) of its own units, or batch 8 x
accumulation 1 and batch 1 x accumulation 8 train different things. So an objective reports, per
micro-batch, each term as a mean over the micro-batch's units (:class:`LossOutput`), and how many
units of each term the micro-batch holds (``weight``); the loop scales term ``k`` of micro-batch ``m``
by ``u_mk / U_k`` (``U_k`` summed over every micro-batch and process) before back-propagating::

    L = sum_k c_k * (sum_m u_mk * mean_mk) / U_k
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Union, runtime_checkable

import torch

#: Units of each loss term in one micro-batch: a number for a one-term loss, or term name -> number.
Units = Union[float, Mapping[str, float]]

#: The name of the only term of a one-term loss (``LossOutput(loss=...)``).
LOSS = "loss"


@dataclass
class LossTerm:
    """One term of a composite loss.

    Attributes:
        value: scalar tensor, the term's mean over this micro-batch's units (logged under its name).
        coef: the loss adds ``coef * value`` (logged values are the raw ``value``).
    """

    value: torch.Tensor
    coef: float = 1.0


@dataclass(frozen=True)
class Mean:
    """A logged metric that is the mean of ``count`` units of this micro-batch (completions, tokens, pairs).

    The step logs ``Σ value·count / Σ count`` over its micro-batches and processes, so the figure is the
    same however the batch is split (a per-completion mean in micro-batches whose loss is weighted by
    tokens would otherwise be logged token-weighted).

    Attributes:
        value: float or 0-dim tensor, the mean over this micro-batch's units.
        count: how many units it averages (0: the micro-batch has none and adds nothing).
    """

    value: float | torch.Tensor
    count: float | torch.Tensor


@dataclass(frozen=True)
class Max:
    """A logged metric that is the largest value of the micro-batch: the step logs the largest over its
    micro-batches and processes."""

    value: float | torch.Tensor


@dataclass(frozen=True)
class Min:
    """A logged metric that is the smallest value of the micro-batch: the step logs the smallest."""

    value: float | torch.Tensor


@dataclass(frozen=True)
class Sum:
    """A logged metric that counts something in the micro-batch (tokens, calls): the step logs the total
    over its micro-batches and processes."""

    value: float | torch.Tensor


#: What ``LossOutput.metrics`` holds per name.
MetricValue = Union[float, torch.Tensor, Mean, Max, Min, Sum]


@dataclass
class LossOutput:
    """A micro-batch's loss and the metrics to log with it.

    Attributes:
        loss: a one-term loss: scalar tensor, the mean over this micro-batch's units (``weight``).
        metrics: name -> value logged for the optimizer step. A plain float or 0-dim tensor is a mean
            over the first term's units (each micro-batch weighted by its share of them); a metric over
            other units is a :class:`Mean` (value, count), an extreme a :class:`Max` / :class:`Min`, a
            count a :class:`Sum`.
        terms: a composite loss instead of ``loss``: term name -> :class:`LossTerm` (or a scalar
            tensor, coefficient 1), each a mean over its own units; ``weight`` then returns the
            units per term name. Each term is also logged under its name.
    """

    loss: torch.Tensor | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    terms: dict[str, LossTerm | torch.Tensor] = field(default_factory=dict)

    def parts(self) -> dict[str, LossTerm]:
        """Term name -> :class:`LossTerm`; a one-term loss is ``{"loss": LossTerm(loss)}``."""
        if self.terms:
            return {k: v if isinstance(v, LossTerm) else LossTerm(v) for k, v in self.terms.items()}
        if self.loss is None:
            raise TypeError("LossOutput needs a loss or terms")
        return {LOSS: LossTerm(self.loss)}

    def total(self) -> torch.Tensor:
        """The micro-batch's loss as a scalar (terms summed with their coefficients), for checks and probes."""
        return sum(part.coef * part.value for part in self.parts().values())  # type: ignore[return-value]


def units_by_term(units: Units) -> dict[str, float]:
    """``weight(batch)`` as term name -> units (a plain number is the units of the one term ``loss``)."""
    if isinstance(units, Mapping):
        return {str(k): float(v) for k, v in units.items()}
    return {LOSS: float(units)}


@dataclass
class UpdatePlan:
    """The micro-batches one rollout batch is trained as (PPO: epochs x shuffled minibatches).

    Attributes:
        batch: the rollout batch with everything the updates need (old log-probs, advantages, ...).
        rows: one (r,) index tensor per micro-batch, in training order; each micro-batch is
            ``batch.select(rows)``.
    """

    batch: Any
    rows: list[torch.Tensor]

    def micro_batches(self) -> list[Any]:
        """Every micro-batch of the plan, in order (the loop serves them one at a time instead)."""
        return [self.batch.select(rows) for rows in self.rows]


@runtime_checkable
class Rollout(Protocol):
    """Produces the next training batch, possibly by sampling from ``policy``."""

    def next_batch(self, policy: torch.nn.Module) -> Any: ...

    def eval_batches(self) -> Iterator[Any]:
        """Held-out batches, in a fixed order, for periodic evaluation."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at the same position (epoch, offset, RNG)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ListsExamples(Protocol):
    """A rollout that can list every example once (offline data), e.g. to precompute reference log-probs."""

    def all_batches(self, split: str) -> Iterator[Any]:
        """Every example of ``"train"`` or ``"eval"`` once, grouped as training / evaluation first see
        them, each batch carrying ``index`` (B,) example indices."""
        ...

    def num_examples(self, split: str) -> int:
        """How many examples ``split`` holds."""
        ...


@runtime_checkable
class CountsEvalBatches(Protocol):
    """A rollout that knows how many batches :meth:`Rollout.eval_batches` yields: the evaluation's
    progress bar then has a total and an ETA (optional; see :func:`alignkit.loop.eval_batch_count`)."""

    def num_eval_batches(self) -> int: ...


@runtime_checkable
class Samples(Protocol):
    """A rollout that samples completions from the policy: what online objectives need to know of it.

    Attributes:
        temperature: the sampling temperature; objectives compute log-probs at this temperature.
        num_samples: completions per prompt (k).
        max_new_tokens: the cap on a completion's length (the generation budget).
    """

    temperature: float
    num_samples: int
    max_new_tokens: int


@runtime_checkable
class FillsBatches(Protocol):
    """A rollout that decides, once a batch is scored, which of its rows to train on and whether to sample
    more (DAPO's dynamic sampling: groups whose rewards are all equal carry no signal)."""

    def fill(self, batch: Any, more: Callable[[], Any]) -> Any:
        """The batch to train on, given the scored ``batch`` and ``more()``, which samples and scores another."""
        ...


@runtime_checkable
class ReportsStats(Protocol):
    """A rollout or scorer with counts to log each step (checker errors and time-outs, refills, ...)."""

    def pop_stats(self) -> dict[str, float]:
        """What happened since the last call (then forgotten): name -> number, logged with the step."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores completions: ``(batch) -> rewards`` (B,) or (B, A), float32, finite."""

    def __call__(self, batch: Any) -> torch.Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """Turns a batch into a loss. Both methods are required."""

    def weight(self, batch: Any) -> Units:
        """How many units the loss of ``batch`` averages over (the unit is the objective's: target
        tokens for token-mean NLL, pairs for a pair loss, completions for a sequence-level policy
        gradient); for a composite loss, term name -> units of that term (see the module docstring)."""
        ...

    def __call__(self, batch: Any) -> LossOutput: ...


@runtime_checkable
class Stateful(Protocol):
    """An objective that keeps state across steps (a critic, a KL controller, a baseline): checkpointed."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class HasExtraParameters(Protocol):
    """An objective that optimises tensors outside the policy (value / reward heads, critics)."""

    def extra_parameters(self) -> list[Any]:
        """Tensors trained like the policy, or param-group dicts with their own options
        (``{"params": head.parameters(), "lr": 1e-4}``)."""
        ...


@runtime_checkable
class Evaluates(Protocol):
    """An objective with held-out metrics."""

    def evaluate(self, batch: Any) -> dict[str, torch.Tensor]:
        """Per-example held-out values (B,), no gradient."""
        ...

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out metrics from the concatenated per-example values (:func:`mean_summary` for plain means)."""
        ...


@runtime_checkable
class PlansUpdates(Protocol):
    """An objective that trains one rollout batch as several micro-batches (the loop serves and checkpoints them)."""

    def updates(self, batch: Any) -> UpdatePlan: ...


@runtime_checkable
class SavesExtras(Protocol):
    """An objective that writes files beside the saved model (heads), in checkpoints and ``final/``."""

    def save_extras(self, folder: Path) -> None: ...


def mean_summary(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each held-out value: the summary of an objective with nothing more to say."""
    return {k: float(v.mean()) for k, v in values.items()}


@dataclass(frozen=True)
class Capabilities:
    """What an objective offers beyond the required contract, resolved once when a run is built.

    Attributes:
        stateful / extra_parameters / evaluates / plans_updates / saves_extras: the objective
            itself when it implements that protocol, else None.
    """

    stateful: Stateful | None
    extra_parameters: HasExtraParameters | None
    evaluates: Evaluates | None
    plans_updates: PlansUpdates | None
    saves_extras: SavesExtras | None

    @classmethod
    def of(cls, objective: Any, where: str = "objective") -> "Capabilities":
        """The capabilities of ``objective``; TypeError when it misses the required contract."""
        if not isinstance(objective, Objective):
            missing = [m for m in ("weight", "__call__") if not callable(getattr(objective, m, None))]
            raise TypeError(f"{where}: {type(objective).__name__} is not an Objective (missing {', '.join(missing)}; "
                            "see alignkit.api.Objective and Step 4 of docs/plugins.md)")

        def check(protocol: type) -> Any:
            return objective if isinstance(objective, protocol) else None

        return cls(stateful=check(Stateful), extra_parameters=check(HasExtraParameters), evaluates=check(Evaluates),
                   plans_updates=check(PlansUpdates), saves_extras=check(SavesExtras))
