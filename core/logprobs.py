"""Per-token log-probs of a causal LM without materialising its logits.

The policy (and reference) path runs the transformer trunk to get hidden states and hands them,
with the model's output head, to :func:`alignkit.kernels.linear_token_stats`: no (B, T, V) logits and
no method-side ``log_softmax``. Labels are shifted here, once, for every method.

The output head is what the model itself does after its trunk (:class:`OutputHead`): the ``lm_head``
weight and bias, then the logit scale and soft cap its config declares (Phi's bias, Granite's
``logits_scaling``, Cohere's ``logit_scale``, Gemma's ``final_logit_softcapping``...), so the log-probs
are those of the distribution ``generate`` samples from. :func:`output_head` discovers it from the
config and modules and checks it once per model object on a short probe against the model's own
``forward``; a model whose logits it cannot reproduce (some other processing, a non-linear or
adapter-wrapped head) gets one warning and is scored through its own logits
(:func:`alignkit.kernels.token_stats`), never silently through a wrong head.

The training loop hands accelerate a :class:`PolicyModule` (its ``forward`` is this path), and the
functions here *call* a prepared policy instead of reaching into its trunk, so DDP / FSDP / DeepSpeed
wrappers run for every method's forward (gradient sync, parameter gathering).

Length grouping: a batch pads every row to its longest, so a DPO batch of short and long answers
spends much of its compute on padding. With ``trainer.length_grouping = f`` (0 < f <= 1) the rows
are sorted by length and cut into groups whose rows each fill at least ``f`` of their group's width;
each group runs trimmed to that width (trailing padding only, so positions do not move) inside the
one forward, and the results come back in the batch's row order. Per row the result is the same
computation (equal to float rounding); padding FLOPs and activation memory shrink.

Shared prefixes: rows that repeat a prompt (the k samples of a rollout, a preference pair) are
given with ``prefix_groups`` (:meth:`alignkit.batches.TokenBatch.prefix_groups`), and with
``trainer.shared_prefix`` on (the default) each group runs as one packed sequence whose prefix is
computed once (:mod:`alignkit.shared_prefix`), forward and backward, instead of length grouping.
A model gets this once a probe has shown that its trunk takes the packed layout (a 4-D mask and
position ids) to the row-by-row hidden states; models with sliding-window or other non-causal
attention, or attention kernels that ignore a 4-D mask (flash attention), are scored row by row
(the same values, without the saving). Every pass over the same batch (policy, reference, old
policy) makes the same choice, so a first ratio is exactly 1 and a first KL exactly 0.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from alignkit import kernels
from alignkit.kernels.token_stats import mean_from_sum

from .shared_prefix import PackedRows, pack_shared_prefixes
from .tokenize import IGNORE_INDEX


def _unwrap(model: Any) -> Any:
    # DDP / FSDP / accelerate wrappers keep the HF model in ``.module``.
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model


def unwrap_lm(model: Any) -> Any:
    """The HF causal LM (or PEFT model) inside DDP / FSDP / DeepSpeed and :class:`PolicyModule` wrappers."""
    for _ in range(8):
        inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def lm_head_weight(model: Any) -> torch.Tensor:
    """The (V, d) output-embedding weight of a (possibly wrapped) HF causal LM.

    Only the weight: the model's logits may also need its bias, scale and soft cap; use
    :func:`output_head` to get all of them.
    """
    return _unwrap(model).get_output_embeddings().weight


# ---------------------------------------------------------------------------------------------- output head
@dataclass(frozen=True)
class OutputHead:
    """How a causal LM turns its final hidden state into logits, in the fused kernels' terms::

        logits = (hidden @ weight.T + bias) · logit_scale
        logits = softcap · tanh(logits / softcap)          if softcap is set

    Attributes:
        weight: (V, d) ``lm_head`` weight (tied to the input embeddings or not).
        bias: (V,) ``lm_head`` bias (Phi), or None.
        logit_scale: multiplies the logits (Granite: ``1 / logits_scaling``; Cohere: ``logit_scale``).
        softcap: Gemma-style soft cap (``final_logit_softcapping``), or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The full processed logits in float32 (float64 for float64 inputs), plain torch.

        Materialises (…, V): for probes and tests, not for training (use :meth:`token_stats`).

        Args:
            hidden: (…, d) final hidden states.

        Returns:
            (…, V) logits.
        """
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        bias = None if self.bias is None else self.bias.to(acc)
        z = torch.nn.functional.linear(hidden.to(acc), self.weight.to(acc), bias) * self.logit_scale  # (…, V)
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def token_stats(self, hidden: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                    entropy: bool = False, ignore_index: int = IGNORE_INDEX) -> kernels.TokenStats:
        """:func:`alignkit.kernels.linear_token_stats` through this head (no (B, T, V) logits).

        Args:
            hidden: (B, T, d) hidden states, already aligned with ``labels`` (the caller shifts).
            labels: (B, T) targets, ``ignore_index`` where not scored.
            temperature: divides the processed logits.
            entropy: also return the per-token entropy.
            ignore_index: label value of skipped positions.

        Returns:
            :class:`alignkit.kernels.TokenStats`, differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.
        """
        return kernels.linear_token_stats(hidden, self.weight, labels, ignore_index=ignore_index,
                                          temperature=temperature, entropy=entropy, bias=self.bias,
                                          logit_scale=self.logit_scale, softcap=self.softcap)


@dataclass(frozen=True)
class LogitKnob:
    """A config field through which models process their ``lm_head`` output.

    Attributes:
        key: the field of the (text) config.
        readings: what the field may mean, the usual one first: ``"multiply"`` or ``"divide"`` (the
            logits by it) or ``"softcap"``. The same name means different things in different
            models, so the probe in :func:`output_head` keeps the reading that reproduces the logits.
        models: who uses it (documentation).
    """

    key: str
    readings: tuple[str, ...]
    models: str


LOGIT_KNOBS: tuple[LogitKnob, ...] = (
    LogitKnob("final_logit_softcapping", ("softcap",), "Gemma 2 / 3 / 3n / 4, NanoChat, Mistral Large 4"),
    LogitKnob("logits_scaling", ("divide", "multiply"),
              "Granite family and MiniCPM3 divide (MiniCPM3 its hidden states, the same without a bias); "
              "HyperCLOVAX multiplies"),
    LogitKnob("logit_scale", ("multiply",), "Cohere, Cohere 2"),
    LogitKnob("output_multiplier", ("multiply",), "MuseSpark (before its soft cap)"),
)
"""The config fields :func:`output_head` understands; add one here to support a new family."""

PROBE_TOKENS = 8
"""Length of the probe sequence :func:`output_head` runs through the model once."""

_VERDICT = "_alignkit_output_head"  # attribute of the unwrapped model holding the probe's verdict


@dataclass(frozen=True)
class _Verdict:
    """What the probe decided for one model object: the head's scalars, or why the kernels cannot be used."""

    logit_scale: float = 1.0
    softcap: float | None = None
    fallback: str | None = None  # the reason, when the model's own logits must be used


def _architecture(lm: Any) -> str:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # PEFT
    return type(base).__name__


def _text_config(lm: Any) -> Any:
    config = getattr(lm, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _knob_value(config: Any, key: str) -> float | None:
    try:
        value = getattr(config, key, None)
    except RuntimeError:  # a heterogeneous config refusing a per-layer field: not a head-wide knob
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value != 0 else None


def _candidates(config: Any) -> list[tuple[float, float | None]]:
    """Every ``(logit_scale, softcap)`` the config's knobs allow, the usual reading first."""
    options: list[list[tuple[str, float]]] = []
    for knob in LOGIT_KNOBS:
        value = _knob_value(config, knob.key)
        if value is not None:
            options.append([(reading, value) for reading in knob.readings])
    found: list[tuple[float, float | None]] = []
    for combo in itertools.product(*options):
        scale, softcap = 1.0, None
        for reading, value in combo:
            if reading == "softcap":
                softcap = value if value > 0 else None
            else:
                scale *= value if reading == "multiply" else 1.0 / value
        if (scale, softcap) not in found:
            found.append((scale, softcap))
    return found


def _not_plain_linear(layer: Any) -> str | None:
    """Why ``layer`` is not a plain ``nn.Linear`` the kernels can stand in for, or None if it is."""
    if layer is None:
        return "it has no output embeddings (get_output_embeddings() is None)"
    linear = torch.nn.Linear
    if not isinstance(layer, linear) or type(layer).forward is not linear.forward or "forward" in vars(layer):
        return f"its output layer is a {type(layer).__module__}.{type(layer).__qualname__}, not a plain torch.nn.Linear"
    if not layer.weight.is_floating_point() or layer.weight.device.type == "meta":
        return f"its output layer's weight is {layer.weight.dtype} on {layer.weight.device}"
    return None


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    # Dropout would make the model's forward and the trunk's differ; every module's own flag comes back.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _probe_tolerance(dtype: torch.dtype) -> float:
    # float32: only the matmul's rounding differs; half: the model rounds its logits to 2^-8 (bf16).
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _probe(lm: Any) -> _Verdict:
    """Run the model once on :data:`PROBE_TOKENS` tokens and keep the candidate head that reproduces it."""
    layer = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    reason = _not_plain_linear(layer)
    if reason is not None:
        return _Verdict(fallback=reason)
    weight = layer.weight  # (V, d)
    vocab = weight.shape[0]
    # ids spread over the first half of the vocabulary: added tokens (multimodal placeholders) sit at its end
    ids = torch.linspace(0, vocab // 2, PROBE_TOKENS, device=weight.device).long()[None]  # (1, P)
    mask = torch.ones_like(ids)  # (1, P)
    candidates = _candidates(_text_config(lm))  # never empty: no knob gives [(1.0, None)]
    errors: list[float] = []
    try:
        with torch.no_grad(), _eval_mode(lm):
            own = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (1, P, V)
            hidden = _trunk_hidden_states(lm, ids, mask)  # (1, P, d)
            if own.shape[-1] != vocab:
                return _Verdict(fallback=f"its logits have {own.shape[-1]} entries but its lm_head {vocab} rows")
            want = torch.log_softmax(own.float(), dim=-1)  # (1, P, V)
            for logit_scale, softcap in candidates:
                got = OutputHead(weight, layer.bias, logit_scale, softcap).logits(hidden)  # (1, P, V)
                errors.append(float((torch.log_softmax(got, dim=-1) - want).abs().max()))
    except Exception as exc:  # e.g. a weight that only exists inside its module's forward (ZeRO-3)
        return _Verdict(fallback=f"the probe could not rebuild its logits: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}")
    tol = _probe_tolerance(own.dtype) * max(1.0, float(own.float().abs().max()))
    best: tuple[float, tuple[float, float | None]] | None = None
    for err, candidate in zip(errors, candidates):
        if err <= tol and (best is None or err < best[0]):
            best = (err, candidate)
    if best is None:
        tried = ", ".join(f"scale={s:g} softcap={c} (off by {e:.3g})" for (s, c), e in zip(candidates, errors))
        return _Verdict(fallback=f"no linear head with bias, logit scale and soft cap reproduces its logits: "
                                 f"tried {tried}; config fields read: {', '.join(k.key for k in LOGIT_KNOBS)}")
    return _Verdict(*best[1])


def _verdict(lm: Any) -> _Verdict:
    verdict = lm.__dict__.get(_VERDICT)
    if verdict is None:
        verdict = _probe(lm)
        lm.__dict__[_VERDICT] = verdict  # travels with copy.deepcopy (a frozen reference copy)
        if verdict.fallback is not None:
            warnings.warn(f"alignkit: {_architecture(lm)}: the fused log-prob kernels cannot reproduce this "
                          f"model's logits ({verdict.fallback}); log-probs come from the model's own logits "
                          "instead (same values, a (B, T, V) tensor per forward)", RuntimeWarning, stacklevel=3)
    return verdict


def output_head(model: Any) -> OutputHead | None:
    """The output head of a (possibly wrapped) HF causal LM, checked against the model's own logits.

    The head is read from the model: ``get_output_embeddings()`` (weight and bias, tied or not, PEFT
    models included) and the config fields of :data:`LOGIT_KNOBS` (of the text config for multimodal
    models). The first call for a model object runs its ``forward`` and its trunk once on a short probe
    (eval mode, no grad) and keeps the reading of the knobs whose log-softmax matches the model's own;
    the verdict is cached on the model object (and travels with ``copy.deepcopy``).

    Args:
        model: a HF causal LM, a PEFT model, or either inside DDP / FSDP / :class:`PolicyModule`.

    Returns:
        The :class:`OutputHead` (current parameter tensors), or None when the kernels cannot reproduce
        the model's logits; a ``RuntimeWarning`` naming the architecture and the reason is issued once
        per model object, and callers then use the model's own logits.
    """
    lm = unwrap_lm(model)
    verdict = _verdict(lm)
    if verdict.fallback is not None:
        return None
    layer = lm.get_output_embeddings()
    return OutputHead(layer.weight, layer.bias, verdict.logit_scale, verdict.softcap)


# ---------------------------------------------------------------------------------------------- shared prefixes
_SHARED_PREFIX = True  # set per run from trainer.shared_prefix
_PACKING = "_alignkit_shared_prefix"  # attribute of the unwrapped model holding its packing verdict
_PACKING_ATTENTION = ("sdpa", "eager")  # attention implementations that take a prepared 4-D mask as is


def set_shared_prefix(enabled: bool) -> None:
    """Pack rows that share a prefix in every log-prob forward given ``prefix_groups`` (False: never)."""
    global _SHARED_PREFIX
    _SHARED_PREFIX = bool(enabled)


@dataclass(frozen=True)
class _PackingVerdict:
    """Whether one model object takes the packed layout, and how."""

    mask_dtype: torch.dtype | None = None  # None: a bool mask (sdpa); else additive in this dtype (eager)
    pair_cost: float = 0.0  # attention pair vs token compute (see pack_shared_prefixes)
    fallback: str | None = None  # why not, when it does not


def _packing_probe(lm: Any) -> _PackingVerdict:
    """Decide from the config, then check on two short rows that packed = row-by-row hidden states."""
    config = _text_config(lm)
    attention = getattr(config, "_attn_implementation", None)
    if attention not in _PACKING_ATTENTION:
        return _PackingVerdict(fallback=f"its attention implementation is {attention!r}, not one of {_PACKING_ATTENTION}")
    sliding = _knob_value(config, "sliding_window")
    layer_types = set(getattr(config, "layer_types", None) or [])
    if (sliding and getattr(config, "use_sliding_window", True)) or layer_types - {"full_attention"}:
        return _PackingVerdict(fallback=f"it has other attention than full causal attention (layer types "
                                        f"{sorted(layer_types) or 'not given'}, sliding_window={sliding})")
    embeddings = lm.get_input_embeddings().weight  # (V, d)
    mask_dtype = None if attention == "sdpa" else embeddings.dtype
    params = sum(p.numel() for p in lm.parameters())
    width, layers = getattr(config, "hidden_size", 0) or 0, getattr(config, "num_hidden_layers", 0) or 0
    pair_cost = 2.0 * width * layers / params if params else 0.0
    # two rows sharing 3 tokens, ids spread over the first half of the vocabulary (as the head's probe)
    ids = torch.linspace(0, embeddings.shape[0] // 2, PROBE_TOKENS, device=embeddings.device).long()
    rows = torch.stack([ids[[0, 1, 2, 3, 4, 0]], ids[[0, 1, 2, 5, 6, 7]]])  # (2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], device=ids.device)  # (2, 6)
    packed = pack_shared_prefixes(rows, mask, torch.zeros(2, dtype=torch.long))
    try:
        with torch.no_grad(), _eval_mode(lm):
            plain = _trunk_hidden_states(lm, rows, mask)  # (2, 6, d)
            verdict = _PackingVerdict(mask_dtype, pair_cost)
            got = _packed_hidden_states(lm, packed, verdict)  # (2, 6, d)
    except Exception as exc:  # a trunk that refuses a 4-D mask or position ids
        return _PackingVerdict(fallback=f"its trunk did not take the packed layout: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}")
    real = mask.bool()
    error = float((got[real].float() - plain[real].float()).abs().max())
    tol = _probe_tolerance(plain.dtype) * max(1.0, float(plain[real].float().abs().max()))
    if error > tol:
        return _PackingVerdict(fallback=f"its packed hidden states were {error:.3g} away from its own (tolerance {tol:.3g})")
    return verdict


def _packing_verdict(lm: Any) -> _PackingVerdict:
    """The model object's cached verdict. A fallback is silent: row by row gives the same values, slower."""
    verdict = lm.__dict__.get(_PACKING)
    if verdict is None:
        verdict = _packing_probe(lm)
        lm.__dict__[_PACKING] = verdict  # travels with copy.deepcopy (a frozen reference copy)
    return verdict


def _packing(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             prefix_groups: torch.Tensor | None) -> PackedRows | None:
    """The packed layout of these rows for this model, or None (row by row)."""
    if prefix_groups is None or not _SHARED_PREFIX or output_head(lm) is None:
        return None
    verdict = _packing_verdict(lm)
    if verdict.fallback is not None:
        return None
    return pack_shared_prefixes(input_ids, attention_mask, prefix_groups, pair_cost=verdict.pair_cost)


def _packed_hidden_states(lm: Any, packed: PackedRows, verdict: _PackingVerdict) -> torch.Tensor:
    hidden = _run_trunk(lm, input_ids=packed.input_ids, attention_mask=packed.attention_mask(verdict.mask_dtype),
                        position_ids=packed.position_ids)  # (G, L, d)
    return packed.unpack(hidden)  # (N, T, d)


_LENGTH_GROUPING = 0.0  # set per run from trainer.length_grouping (0: one padded forward)


def set_length_grouping(min_fill: float) -> None:
    """Group rows by length in every log-prob forward: each row fills >= ``min_fill`` of its group's width."""
    global _LENGTH_GROUPING
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"trainer.length_grouping={min_fill}: expected a fill share in [0, 1] (0: off)")
    _LENGTH_GROUPING = float(min_fill)


def length_groups(attention_mask: torch.Tensor, min_fill: float) -> list[tuple[torch.Tensor, int]] | None:
    """Rows grouped by length: ``[(row indices, width), ...]``, longest first; None if one group fits all.

    A row's length is one past its last real token (at least 2; trailing padding is what is cut).
    Rows sorted longest first join the current group while ``length >= min_fill * width``.
    """
    rows, width = attention_mask.shape
    if min_fill <= 0 or rows < 2:
        return None
    real = attention_mask.bool()  # (B, T)
    ends = (width - real.flip(1).int().argmax(1)).where(real.any(1), 0)  # (B,) one past the last real token
    ends = ends.clamp(min=min(2, width)).tolist()  # at least one predicted position per group
    order = sorted(range(rows), key=lambda r: -ends[r])
    groups: list[list[int]] = []
    for r in order:
        if groups and ends[r] >= min_fill * ends[groups[-1][0]]:
            groups[-1].append(r)
        else:
            groups.append([r])
    if len(groups) == 1 and ends[order[0]] == width:
        return None
    device = attention_mask.device
    return [(torch.tensor(g, device=device), ends[g[0]]) for g in groups]


def _grouped_stats(compute: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   **kwargs: Any) -> Any:
    """``compute(ids, mask, labels, **kwargs)`` per length group, reassembled in row order.

    With ``with_hidden=True`` in ``kwargs``, ``compute`` returns ``(stats, hidden)`` and so does this:
    hidden (B, T, d), zeros where a group was trimmed (trailing padding).
    """
    groups = length_groups(attention_mask, _LENGTH_GROUPING)
    if groups is None:
        return compute(input_ids, attention_mask, labels, **kwargs)
    with_hidden = bool(kwargs.get("with_hidden", False))
    width = input_ids.shape[1] - 1  # predicted positions
    parts, hiddens = [], []
    for rows, end in groups:
        out = compute(input_ids[rows, :end], attention_mask[rows, :end], labels[rows, :end], **kwargs)
        stats, hidden = out if with_hidden else (out, None)
        pad = width - stats.logprobs.shape[1]
        parts.append((stats, pad))
        if hidden is not None:
            hiddens.append(torch.nn.functional.pad(hidden, (0, 0, 0, pad)))  # (g, T, d)
    inverse = torch.argsort(torch.cat([rows for rows, _ in groups]))  # (B,) sorted position of each row

    def join(field: str, padded: bool) -> torch.Tensor:
        values = [getattr(s, field) for s, _ in parts]
        if padded:  # (g, end-1) -> (g, T-1), zeros where trimmed (ignored positions are 0 anyway)
            values = [torch.nn.functional.pad(v, (0, pad)) for v, (_, pad) in zip(values, parts)]
        return torch.cat(values)[inverse]

    entropy = join("entropy", True) if parts[0][0].entropy is not None else None
    stats = kernels.TokenStats(join("logprobs", True), entropy, join("sum", False), join("mean", False),
                               join("count", False))
    return (stats, torch.cat(hiddens)[inverse]) if with_hidden else stats


def _trunk_hidden_states(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         packed: PackedRows | None = None) -> torch.Tensor:
    if packed is not None:
        return _packed_hidden_states(lm, packed, _packing_verdict(lm))  # (B, T, d)
    return _run_trunk(lm, input_ids=input_ids, attention_mask=attention_mask)  # (B, T, d)


def _run_trunk(lm: Any, **inputs: torch.Tensor) -> torch.Tensor:
    """The final hidden states (B, T, d) of the model's trunk (its decoder, no head), without a cache."""
    trunk = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    out = trunk(**inputs, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _scored_positions_only(stats_of: Any, hidden: torch.Tensor, targets: torch.Tensor) -> kernels.TokenStats:
    """``stats_of(hidden, targets)`` on the positions with a scored target only, zeros elsewhere.

    Prompt and padding positions have no target, yet each would cost a pass over the whole
    vocabulary in the output head: in an HH-RLHF batch five positions in six are prompt or padding,
    and the LM regulariser of a reward model scores the chosen half of a batch only. So the scored
    positions go through the head as one packed row (M,), and their values are spread back; a
    row's sum is then the plain sum over its (B, T) row, zeros included, as the kernels take it.
    """
    scored = targets != IGNORE_INDEX  # (B, T)
    if bool(scored.all()) or not bool(scored.any()):
        return stats_of(hidden, targets)
    count = scored.sum(dim=1)  # (B,) int64
    part = stats_of(hidden[scored][None], targets[scored][None])  # (1, M) per position

    def spread(x: torch.Tensor | None) -> torch.Tensor | None:  # (1, M) -> (B, T), 0 where not scored
        return None if x is None else x.new_zeros(targets.shape).masked_scatter(scored, x[0])

    logprobs = spread(part.logprobs)  # (B, T)
    total = logprobs.sum(dim=1)  # (B,)
    return kernels.TokenStats(logprobs, spread(part.entropy), total, mean_from_sum(total, count), count)


def _own_logits_stats(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, entropy: bool, with_hidden: bool) -> Any:
    # The fallback: the model's own forward builds its (B, T, V) logits; only the log-softmax stays fused.
    out = lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=with_hidden)
    stats = kernels.token_stats(out.logits[:, :-1], labels[:, 1:], ignore_index=IGNORE_INDEX,
                                temperature=temperature, entropy=entropy)  # logits (B, T-1, V)
    return (stats, out.hidden_states[-1]) if with_hidden else stats  # hidden (B, T, d)


def _lm_token_stats(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                    temperature: float, entropy: bool, with_hidden: bool = False,
                    packed: PackedRows | None = None) -> Any:
    """Token stats of the shifted labels (and the trunk's hidden states) of an unwrapped HF model or PEFT model."""
    head = output_head(lm)
    if head is None:
        return _own_logits_stats(lm, input_ids, attention_mask, labels, temperature=temperature, entropy=entropy,
                                 with_hidden=with_hidden)
    hidden = _trunk_hidden_states(lm, input_ids, attention_mask, packed)  # (B, T, d)
    stats = _scored_positions_only(lambda h, y: head.token_stats(h, y, temperature=temperature, entropy=entropy),
                              hidden[:, :-1], labels[:, 1:])  # over the T-1 predicted positions
    return (stats, hidden) if with_hidden else stats


def _lm_next_token_logprobs(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C) log p(candidate | row) at each row's last real token (right padding)."""
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # (B,)
    last = attention_mask.long().sum(dim=1) - 1  # (B,)
    labels = candidates.to(input_ids.device).expand(input_ids.shape[0], -1)  # (B, C)
    head = output_head(lm)
    if head is None:
        logits = lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[rows, last]  # (B, V)
        return kernels.token_stats(logits[:, None, :].expand(-1, labels.shape[1], -1), labels,
                                   temperature=temperature).logprobs  # (B, C)
    hidden = _trunk_hidden_states(lm, input_ids, attention_mask)[rows, last]  # (B, d)
    return head.token_stats(hidden[:, None, :].expand(-1, labels.shape[1], -1), labels,
                            temperature=temperature).logprobs  # (B, C)


def _rows_stats(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prefix_groups: torch.Tensor | None, **kwargs: Any) -> Any:
    """Token stats of an unwrapped model's rows: packed by shared prefix when that applies, else length-grouped."""
    packed = _packing(lm, input_ids, attention_mask, prefix_groups)
    if packed is not None:
        return _lm_token_stats(lm, input_ids, attention_mask, labels, packed=packed, **kwargs)
    return _grouped_stats(functools.partial(_lm_token_stats, lm), input_ids, attention_mask, labels, **kwargs)


class PolicyModule(torch.nn.Module):
    """The module the loop hands to ``accelerate.prepare``: its ``forward`` is the log-prob path.

    DDP sets up gradient synchronisation, FSDP gathers shards and DeepSpeed hooks its engine only in
    the *wrapper's* ``forward``; calling the HF trunk of the unwrapped model directly bypasses them.
    So every method's forward goes through this one: ``forward(input_ids, attention_mask)`` returns
    the final hidden states (B, T, d); with ``labels`` it returns the :class:`~alignkit.kernels.TokenStats`
    of the shifted labels, computed with the model's :class:`OutputHead` *inside* the forward (where FSDP
    holds it unsharded), or from the model's own logits when :func:`output_head` says the kernels cannot
    reproduce them; ``return_hidden=True`` returns ``(stats, hidden)``; ``candidates`` (C,) returns the
    (B, C) next-token log-probs of those tokens after each row; ``prefix_groups`` (B,) packs rows that
    share a prefix (module docstring). Any other attribute (``generate``,
    ``save_pretrained``, ``config``, ...) is the wrapped model's, so the wrapper is transparent to code
    that treats the policy as a HF model.

    Args:
        module: a HF causal LM, or a PEFT model around one.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 1.0, entropy: bool = False, *, return_hidden: bool = False,
                candidates: torch.Tensor | None = None, prefix_groups: torch.Tensor | None = None) -> Any:
        if candidates is not None:
            return _lm_next_token_logprobs(self.module, input_ids, attention_mask, candidates, temperature)  # (B, C)
        if labels is None:
            packed = _packing(self.module, input_ids, attention_mask, prefix_groups)
            return _trunk_hidden_states(self.module, input_ids, attention_mask, packed)  # (B, T, d)
        return _rows_stats(self.module, input_ids, attention_mask, labels, prefix_groups, temperature=temperature,
                           entropy=entropy, with_hidden=return_hidden)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def routes_through_forward(model: Any) -> bool:
    """True when ``model`` is (or wraps) a :class:`PolicyModule`: call it rather than its trunk."""
    for _ in range(8):
        if isinstance(model, PolicyModule):
            return True
        inner = getattr(model, "module", None)
        if inner is None:
            return False
        model = inner
    return False


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prefix_groups: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states (B, T, d) of a HF causal LM (after its last norm), no logits.

    A prepared policy (DDP / FSDP / DeepSpeed around a :class:`PolicyModule`) is *called*, so the
    wrapper's forward runs (gradient sync, parameter gathering); a bare HF model runs its trunk.
    ``prefix_groups`` (B,) packs rows that share a prefix, as in :func:`token_stats` (zeros on padding then).
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, prefix_groups=prefix_groups)  # (B, T, d)
    lm = _unwrap(model)
    return _trunk_hidden_states(lm, input_ids, attention_mask, _packing(lm, input_ids, attention_mask, prefix_groups))


def token_stats(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                temperature: float = 1.0, entropy: bool = False, prefix_groups: torch.Tensor | None = None) -> Any:
    """Log p(label_t | tokens < t) for every position, with per-sequence sums.

    Args:
        model: a HF causal LM (possibly wrapped).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens.
        labels: (B, T) targets aligned with ``input_ids``, ``-100`` where not scored.
        temperature: divides the logits (use the sampling temperature for online methods).
        entropy: also return the per-token entropy (same pass over the vocabulary).
        prefix_groups: (B,) group id per row; rows of a group that start with the same tokens run
            them once (shared-prefix packing, see the module docstring). None: no hint.

    Returns:
        :class:`alignkit.kernels.TokenStats` over the T-1 predicted positions: ``logprobs`` (B, T-1),
        ``sum`` / ``mean`` / ``count`` (B,), ``entropy`` (B, T-1) or None.
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, temperature=temperature,
                     entropy=entropy, prefix_groups=prefix_groups)
    return _rows_stats(unwrap_lm(model), input_ids, attention_mask, labels, prefix_groups, temperature=temperature,
                       entropy=entropy)


def token_stats_with_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                            *, temperature: float = 1.0, entropy: bool = False,
                            prefix_groups: torch.Tensor | None = None) -> tuple[Any, torch.Tensor]:
    """:func:`token_stats` and the final hidden states of the same forward (for heads on the trunk).

    One trunk pass gives both, so a value head (PPO's shared critic) or a reward head with an LM
    regulariser does not run the model twice. Rows without any scored label skip the vocabulary pass.

    Args:
        model: a HF causal LM (possibly wrapped, e.g. a prepared :class:`PolicyModule`).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens.
        labels: (B, T) targets aligned with ``input_ids``, ``-100`` where not scored.
        temperature: divides the logits.
        entropy: also return the per-token entropy.
        prefix_groups: (B,) group id per row, as in :func:`token_stats`.

    Returns:
        ``(stats, hidden)``: :class:`alignkit.kernels.TokenStats` over the T-1 predicted positions, and
        the (B, T, d) final hidden states (after the last norm; from the model's own forward when it
        falls back to its logits).
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, temperature=temperature,
                     entropy=entropy, return_hidden=True, prefix_groups=prefix_groups)
    return _rows_stats(unwrap_lm(model), input_ids, attention_mask, labels, prefix_groups, temperature=temperature,
                       entropy=entropy, with_hidden=True)


def next_token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor,
                        *, temperature: float = 1.0) -> torch.Tensor:
    """Full-vocabulary log-probs of a few candidate tokens right after each (right-padded) row.

    ``log p(c | row)`` through the model's :class:`OutputHead` on the last real token's hidden state
    (no (B, V) logits), or from its own logits when it falls back: what an LLM judge reads.

    Args:
        model: a HF causal LM (possibly wrapped).
        input_ids: (B, T) right-padded token ids.
        attention_mask: (B, T) 1 for real tokens.
        candidates: (C,) token ids.
        temperature: divides the logits.

    Returns:
        (B, C) float32 log-probs.
    """
    if routes_through_forward(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, candidates=candidates, temperature=temperature)
    return _lm_next_token_logprobs(unwrap_lm(model), input_ids, attention_mask, candidates, temperature)


def sequence_logprobs(model: Any, batch: Any, **kwargs: Any) -> kernels.TokenStats:
    """:func:`token_stats` on a batch's rows (any :class:`~alignkit.batches.TokenBatch`: its
    ``input_ids``, ``attention_mask`` and ``labels``, each (R, T), and its ``prefix_groups()``); the
    stats cover the T−1 predicted positions (``logprobs`` (R, T−1); ``sum`` / ``mean`` / ``count`` (R,))."""
    return token_stats(model, batch.input_ids, batch.attention_mask, batch.labels,
                       prefix_groups=batch.prefix_groups(), **kwargs)
