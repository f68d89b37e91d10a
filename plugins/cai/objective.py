"""``method=cai``: the training half of Constitutional AI, delegating to existing methods.

- ``method.stage=sl``: supervised learning on the final revisions (the ``sft`` objective).
- ``method.stage=rl``: learning from the AI-labelled pairs with ``method.preference`` — ``dpo``
  (directly; the soft labels make it cDPO-like, see ``alignkit.losses.dpo``) or ``reward_model``
  (Bradley-Terry with soft labels, ``loss=bt``), whose reward model can then drive ``method=ppo``.

The data comes from ``rollout=cai`` (set by ``method/cai.yaml``), whose ``stage`` follows
``method.stage``. The delegate sees the run config with ``cfg.method`` replaced by its own typed
config (``method.options.<name>`` merged in), and nothing else changes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf, open_dict

from alignkit.context import RunContext
from alignkit.errors import ConfigError

STAGE_METHOD = {"sl": "sft"}


@dataclass
class CAIConfig:
    """``method=cai`` options.

    Attributes:
        name: ``cai``.
        stage: ``sl`` (SFT on the revisions) or ``rl`` (preference learning on AI labels).
        preference: the pairs method of the RL stage: ``dpo`` or ``reward_model`` (or any
            registered method that trains on pairs).
        options: options of the delegate methods, keyed by method name, e.g.
            ``{dpo: {beta: 0.1, reference: cached}, reward_model: {lm_weight: 0.0}}``; only the
            entry of the method in use is read (``method.options.dpo.beta=0.2`` on the command line).
    """

    name: str = "cai"
    stage: str = "sl"
    preference: str = "dpo"
    options: dict[str, Any] = field(default_factory=dict)


def _delegate_name(cfg: Any) -> str:
    if cfg.method.stage not in ("sl", "rl"):
        raise ConfigError(f"method.stage={cfg.method.stage}: expected sl or rl")
    return STAGE_METHOD.get(cfg.method.stage, cfg.method.preference)


def delegate_config(cfg: Any, spec: Any) -> Any:
    """The run config as the delegate method expects it: ``cfg.method`` is its typed node."""
    base = OmegaConf.structured(spec.schema) if spec.schema is not None else OmegaConf.create({})
    every = OmegaConf.to_container(cfg.method.options, resolve=True) or {}
    options = every.get(spec.name) or {}
    try:
        method = OmegaConf.merge(base, {"name": spec.name}, options or {})
    except Exception as exc:  # noqa: BLE001 - OmegaConf validation errors
        raise ConfigError(f"method.options: not valid for method '{spec.name}': {str(exc).splitlines()[0]}") from None
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.method = method
    return out


def _spec(cfg: Any, registry: Any) -> Any:
    name = _delegate_name(cfg)
    if cfg.method.stage == "rl" and cfg.loss.get("name") in (None, "none"):
        raise ConfigError(f"method=cai method.stage=rl with method.preference={name} needs a loss: "
                          "loss=dpo (preference dpo) or loss=bt (preference reward_model)")
    return registry.get("methods", name, where="method.preference")


def consumes(cfg: Any) -> str:
    """tokens for the SL stage; the preference method's kind (pairs) for the RL stage."""
    from alignkit.plugin_manager import get_manager

    spec = _spec(cfg, get_manager().registry)
    kind = spec.kind_for(delegate_config(cfg, spec))
    if cfg.method.stage == "rl" and kind != "pairs":
        raise ConfigError(f"method.preference={spec.name} trains on {kind} records; the RL stage gives pairs "
                          "(use dpo, or reward_model with loss=bt)")
    return kind


class _DelegateContext:
    """The run context with another ``cfg``; reads and writes of everything else go to the real one."""

    def __init__(self, ctx: RunContext, cfg: Any) -> None:
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "cfg", cfg)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_ctx"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_ctx"), name, value)


def build(ctx: RunContext) -> Any:
    """Constitutional AI: SFT on critique-revised answers (sl), or DPO / BT on AI-labelled pairs (rl)."""
    cfg = ctx.cfg
    rollout = cfg.rollout
    if rollout.get("name") == "cai" and rollout.get("stage") != cfg.method.stage:
        raise ConfigError(f"rollout.stage={rollout.get('stage')} but method.stage={cfg.method.stage}; set one stage")
    spec = _spec(cfg, ctx.registry)
    ctx.log(f"cai: stage {cfg.method.stage} trains with method '{spec.name}'")
    return spec.build(_DelegateContext(ctx, delegate_config(cfg, spec)))
