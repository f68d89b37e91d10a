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

from .errors import CheckpointError, ConfigError, ModelError
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


def base_model_config(adapter: Path) -> Any:
    """The ``model`` node of the base that ``adapter`` was trained on, with LoRA off.

    Read from the checkpoint's ``manifest.json`` (``model_config``, beside ``model/``), else from the
    ``config.yaml`` of the run the adapter belongs to (the run folder above
    ``checkpoints/step-N/model`` or ``final/adapter``); failing both, ``base_model_name_or_path`` of
    ``adapter_config.json`` when it names a local model folder. ``ModelError`` otherwise.
    """
    import json

    from omegaconf import OmegaConf

    from .checkpoint import MANIFEST
    from .models import ADAPTER_CONFIG, ModelConfig, find_run_config

    schema = OmegaConf.structured(ModelConfig)
    manifest = Path(adapter).parent / MANIFEST
    node = json.loads(manifest.read_text()).get("model_config") if manifest.is_file() else None
    run_config = find_run_config(adapter)
    if node is None and run_config is not None:
        node = OmegaConf.to_container(OmegaConf.load(run_config)).get("model")
    if isinstance(node, dict):
        base = OmegaConf.merge(schema, {k: v for k, v in node.items() if k in schema})
    else:
        named = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not named or not (Path(named) / "config.json").exists():
            where = f"{run_config} has no model node" if run_config is not None else \
                "no manifest.json beside it, no run config.yaml above it"
            raise ModelError(f"{adapter}: a LoRA checkpoint whose base model cannot be found ({where}, and "
                             f"adapter_config.json names base_model_name_or_path={named!r}, not a local model "
                             "folder); load it from its run folder, or load the merged final/ instead")
        base = OmegaConf.merge(schema, {"path": named})
    base.lora.r = 0
    if base.path and Path(base.path).expanduser().resolve() == Path(adapter).resolve():
        raise ModelError(f"{adapter}: the run's model.path is this adapter itself; no base model to merge it into")
    return base


def load_merged(adapter: Path, cfg: Any) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` of a LoRA checkpoint: its base model with the adapter merged in.

    The base comes from :func:`base_model_config` (loaded in ``cfg.dtype``), the adapter from
    ``adapter_model.safetensors`` (checked to fit, as on resume); the result is
    ``W + alpha/r * B A`` in every adapted layer, a plain HF model, the same computation that writes a
    LoRA run's merged ``final/``. The tokenizer is the checkpoint's own when it holds one.

    Args:
        adapter: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        cfg: the ``model`` node that asked for it (``dtype``, ``tokenizer_path``, ``trust_remote_code``).
    """
    from peft import PeftConfig, get_peft_model

    from .models import load_model, load_tokenizer

    base_cfg = base_model_config(adapter)
    base_cfg.dtype, base_cfg.trust_remote_code = cfg.dtype, bool(base_cfg.trust_remote_code or cfg.trust_remote_code)
    if cfg.tokenizer_path:
        base_cfg.tokenizer_path = cfg.tokenizer_path
    model, tokenizer = load_model(base_cfg)
    if not cfg.tokenizer_path and (Path(adapter) / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(cfg, Path(adapter))
    try:
        peft_config = PeftConfig.from_pretrained(str(adapter))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{adapter}: unreadable adapter_config.json: {str(exc).splitlines()[0]}") from exc
    with warnings.catch_warnings():  # transformers' deprecation notes on what PEFT inspects, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, peft_config)
    try:
        load_adapter(peft_model, Path(adapter))
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    merged = peft_model.merge_and_unload()  # W + alpha/r * B A, adapters removed
    merged.requires_grad_(True)  # PEFT froze the base; loaded by path, a model is trainable like any other
    merged.eval()
    return merged, tokenizer


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
                temperature: float = 1.0, entropy: bool = False) -> Any:
        with self._disabled():
            return super().forward(input_ids, attention_mask, labels, temperature, entropy)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._disabled():
            return self.module.generate(*args, **kwargs)

    def train(self, mode: bool = True) -> "AdapterDisabled":
        return self  # always eval; the policy's own mode is left alone
