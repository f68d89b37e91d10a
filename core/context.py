"""What a plugin's ``build`` functions receive: the run's config, models, tokenizer and registry."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from .registry import Registry


@dataclass
class RunContext:
    """Everything a method, rollout or scorer may need while building itself.

    Attributes:
        cfg: the resolved run config.
        run_dir: where the run writes (metrics, checkpoints, final model, caches).
        registry: every registered spec.
        policy: the model being trained (HF causal LM).
        tokenizer: its tokenizer.
        accelerator: the ``accelerate.Accelerator`` of the run.
        kind: the record kind the method consumes.
        log: prints a line on the main process (above the progress bar).
        rollout: the run's rollout, once built (objectives may read it, e.g. to cache per-example
            reference log-probs over ``rollout.all_batches(split)``).
    """

    cfg: DictConfig
    run_dir: Path
    registry: Registry
    policy: torch.nn.Module
    tokenizer: Any
    accelerator: Any
    kind: str
    log: Callable[[str], None] = print
    rollout: Any = None
    resumed: bool = False
    _reference: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def reference(self) -> torch.nn.Module:
        """A frozen copy of the initial policy (made on first use, dropout off, no gradients).

        After a resume the policy holds trained weights, so the reference is loaded afresh from the
        model config instead of copied. With LoRA (``model.lora.r > 0``) it is the policy itself with
        its adapters disabled (:class:`alignkit.lora.AdapterDisabled`), not a copy.
        """
        if self._reference is None:
            from .lora import AdapterDisabled, is_lora

            if is_lora(self.policy):
                # LoRA: the base model *is* the initial policy; no second copy of the weights.
                self._reference = AdapterDisabled(self.policy)
                return self._reference
            if self.resumed:
                from .models import load_model

                reference = load_model(self.cfg.model)[0]
            else:
                reference = copy.deepcopy(self.accelerator.unwrap_model(self.policy))
            reference.eval()
            reference.requires_grad_(False)
            self._reference = reference.to(self.device)
        return self._reference

    def drop_reference(self) -> None:
        """Free the reference model (e.g. once its log-probs are cached)."""
        self._reference = None
