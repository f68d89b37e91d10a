"""LoRA adapters through PEFT: ``model.lora.r=16 model.lora.target_modules=[q_proj,v_proj]``.

LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) freezes the base weight ``W`` (d_out, d_in)
and trains a low-rank update::

    h = W x + (alpha / r) * B A x,   A: (r, d_in), B: (d_out, r), B initialised to 0

so a LoRA policy starts equal to the base model. With adapters on, the reference model of DPO / PPO /
REINFORCE is the *same* module with its adapters disabled (``with model.disable_adapter():``):
exactly the initial policy, with no second copy of the weights in memory (see
:meth:`alignkit.context.RunContext.reference`).

Checkpoints hold the adapter only (``adapter_model.safetensors`` + ``adapter_config.json``; the
frozen base comes from the model config again on resume); the final model is saved *merged*
(``W + alpha/r * B A``, a plain HF folder that loads with ``AutoModelForCausalLM``), with the adapter
beside it in ``final/adapter``. Anything that opens a model by path (``alignkit chat``, ``generate``,
``eval``, ``model.path=``) accepts such a checkpoint: :func:`load_merged` loads the base model the
run's ``config.yaml`` records and merges the adapter into it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .errors import CheckpointError, ConfigError
from .logprobs import PolicyModule, unwrap_lm


def _unwrapped(model: Any) -> Any:
    return unwrap_lm(model)


def is_lora(model: Any) -> bool:
    """True for a PEFT model (possibly inside DDP / :class:`~alignkit.logprobs.PolicyModule`)."""
    inner = _unwrapped(model)
    return hasattr(inner, "peft_config") and hasattr(inner, "disable_adapter")


def apply_lora(model: torch.nn.Module, cfg: Optional[Any]) -> torch.nn.Module:
    """``model`` with LoRA adapters when ``cfg.r > 0`` (only the adapters then require gradients)."""
    if cfg is None or int(cfg.r) <= 0:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if cfg.bias not in ("none", "all", "lora_only"):
        raise ConfigError(f"model.lora.bias={cfg.bias!r}; expected none, all or lora_only")
    targets = list(cfg.target_modules)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    unknown = [t for t in targets if t not in linear]
    if not targets or unknown:
        raise ConfigError(f"model.lora.target_modules: {unknown or 'empty'} not among the model's linear layers "
                          f"({', '.join(linear)})")
    config = PeftLoraConfig(r=int(cfg.r), lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout),
                            target_modules=targets, bias=cfg.bias, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated ``is_gradient_checkpointing``: a warning about PEFT, not the run.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def exportable(model: Any) -> Any:
    """What ``save_pretrained`` should write as the final model: a merged copy for LoRA, else the model."""
    inner = _unwrapped(model)  # the HF model inside DDP / PolicyModule wrappers
    if not is_lora(inner):
        return inner
    return copy.deepcopy(inner).merge_and_unload()  # W + alpha/r * B A, adapters removed


def save_adapter(model: Any, folder: Path) -> None:
    """The adapter alone (safetensors) into ``folder``; nothing for a model without LoRA."""
    if is_lora(model):
        _unwrapped(model).save_pretrained(str(folder), safe_serialization=True)


def load_adapter(model: Any, folder: Path) -> None:
    """Load the adapter weights a checkpoint's ``save_pretrained`` wrote into PEFT model ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        raise CheckpointError(f"{folder}: no adapter_model.safetensors; that checkpoint was not trained with "
                              "model.lora.r > 0 (or set the same model.lora options as the run being resumed)")
    result = set_peft_model_state_dict(_unwrapped(model), load_file(str(path)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"{path}: adapter does not fit model.lora (unexpected {unexpected[:3]})")


class AdapterDisabled(PolicyModule):
    """The reference view of a LoRA policy: the same weights with adapters off, eval mode, no grad.

    Used wherever a frozen initial policy is expected (``ctx.reference()``): its forward (hidden
    states or token stats, like :class:`~alignkit.logprobs.PolicyModule`) and ``generate`` run the
    base model only, so reference log-probs equal those of the base model. It owns no parameters:
    ``.to()``, ``.eval()`` and ``requires_grad_`` leave the policy alone.

    Args:
        policy: the (possibly prepared) LoRA policy.
    """

    def __init__(self, policy: Any) -> None:
        torch.nn.Module.__init__(self)
        self.__dict__["_policy"] = policy  # not a submodule

    @property
    def module(self) -> Any:  # type: ignore[override]
        return _unwrapped(self.__dict__["_policy"])

    @contextlib.contextmanager
    def _disabled(self) -> Iterator[None]:
        model = self.module
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                yield
        finally:
            model.train(was_training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 1.0, entropy: bool = False, **modes: Any) -> Any:
        with self._disabled():
            return super().forward(input_ids, attention_mask, labels, temperature, entropy, **modes)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._disabled():
            return self.module.generate(*args, **kwargs)

    def train(self, mode: bool = True) -> "AdapterDisabled":
        return self  # always eval; the policy's own mode is left alone
