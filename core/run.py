"""Building a run from its config: accelerator, model, rollout, scorer, objective, optimizer, logger.

:func:`build_run` does everything the loop needs done once, in this order (each step may read what the
earlier ones made): the accelerator and process-wide kernel settings, the seed, the checkpoint to
resume, the policy (LoRA, activation checkpointing), the :class:`~alignkit.context.RunContext`, the
rollout, the scorer, the objective and its :class:`~alignkit.interfaces.Capabilities`, the optimizer
(with the objective's extra parameters) and scheduler, ``accelerate.prepare``, and the metrics logger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import distributed, logprobs, memory, run_state
from . import lora as lora_support
from .context import RunContext
from .errors import ConfigError
from .interfaces import Capabilities, Objective, Rollout, Scorer
from .logprobs import PolicyModule
from .metrics import MetricsLogger
from .models import load_model
from .optimizers import build_optimizer
from .plugin_manager import get_manager
from .schedules import build_scheduler


@dataclass
class Console:
    """Where a run's lines go: printed on the main process, above the progress bar while one is shown."""

    enabled: bool = True
    bar: Any = None

    def log(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)


@dataclass
class Run:
    """Everything a training run is made of, built once by :func:`build_run`."""

    cfg: DictConfig
    run_dir: Path
    accelerator: Any
    console: Console
    ctx: RunContext
    tokenizer: Any
    rollout: Rollout
    scorer: Scorer | None
    objective: Objective
    caps: Capabilities
    policy: torch.nn.Module  # the prepared PolicyModule (DDP / FSDP / DeepSpeed around it under launch)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loose: list[torch.nn.Parameter]  # optimised tensors outside the policy (heads, critics)
    metrics: MetricsLogger
    resume: run_state.ResumePoint | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def _load_policy(cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    policy, tokenizer = load_model(cfg.model)
    policy = lora_support.apply_lora(policy, cfg.model.get("lora"))  # model.lora.r > 0: PEFT adapters
    try:
        memory.enable_activation_checkpointing(policy, cfg.trainer.activation_checkpointing)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    policy.train()
    return policy, tokenizer


def build_run(cfg: DictConfig, run_dir: Path) -> Run:
    """Build every part of the run ``cfg`` describes, writing into ``run_dir``."""
    from accelerate import Accelerator
    from transformers.utils import logging as hf_logging

    from alignkit import kernels

    hf_logging.disable_progress_bar()  # our own bars only: no "Loading weights" / "Writing shards"
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    registry = get_manager().registry
    method = registry.get("methods", cfg.method.name, where="method")
    tcfg = cfg.trainer
    if tcfg.max_steps < 1 or tcfg.batch_size < 1 or tcfg.grad_accum < 1:
        raise ConfigError("trainer.max_steps, trainer.batch_size and trainer.grad_accum must be >= 1")
    accelerator = Accelerator(**distributed.accelerator_kwargs(tcfg, distributed.launched_processes()))
    console = Console(enabled=accelerator.is_main_process)
    kernels.set_backend(cfg.kernels)
    try:
        logprobs.set_length_grouping(tcfg.length_grouping)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    logprobs.set_shared_prefix(tcfg.shared_prefix)
    _seed_everything(tcfg.seed)
    resume = run_state.find_resume(cfg)
    if tcfg.release_memory:
        memory.release_freed_memory()  # before the weights: every big tensor of the run gets its own mmap
    policy, tokenizer = _load_policy(cfg)
    if resume is not None:
        run_state.load_weights(policy, resume.checkpoint, cfg.model.name)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, registry=registry, policy=policy, tokenizer=tokenizer,
                     accelerator=accelerator, kind=method.kind_for(cfg), log=console.log, resumed=resume is not None)
    ctx.rollout = registry.get("rollouts", cfg.rollout.name, where="rollout").build(ctx, cfg.rollout)
    scorer = None
    if cfg.scorer.name != "none":
        scorer = registry.get("scorers", cfg.scorer.name, where="scorer").build(ctx, cfg.scorer)
    objective = method.build(ctx)
    try:
        caps = Capabilities.of(objective, where=f"method '{method.name}'")
    except TypeError as exc:
        raise ConfigError(str(exc)) from None

    params = [p for p in policy.parameters() if p.requires_grad]
    extra = list(caps.extra_parameters.extra_parameters()) if caps.extra_parameters else []
    params += [p for p in extra if not isinstance(p, dict)]
    optimizer = build_optimizer(cfg.trainer.optimizer, params)
    for group in (e for e in extra if isinstance(e, dict)):
        optimizer.add_param_group({**group, "params": list(group["params"])})
    scheduler = build_scheduler(tcfg.scheduler, optimizer, tcfg.max_steps)
    # The policy goes to accelerate inside a PolicyModule, whose forward is the log-prob path, so DDP /
    # FSDP / DeepSpeed see every method's forward. Optimised tensors outside it (value and reward
    # heads, critics) start equal everywhere and have their gradients averaged like DDP's.
    wrapped = PolicyModule(policy)
    if any(p.requires_grad for p in wrapped.parameters()):
        prepared, optimizer = accelerator.prepare(wrapped, optimizer)
    else:  # a frozen trunk (reward heads only): nothing for DDP to synchronise
        prepared, optimizer = wrapped.to(accelerator.device), accelerator.prepare(optimizer)
    loose = distributed.loose_parameters(optimizer, prepared)
    distributed.broadcast_parameters(loose, accelerator)
    ctx.policy = prepared
    metrics = MetricsLogger.from_config(cfg, run_dir, enabled=accelerator.is_main_process,
                                        resume_step=resume.step if resume is not None else None)
    return Run(cfg=cfg, run_dir=run_dir, accelerator=accelerator, console=console, ctx=ctx, tokenizer=tokenizer,
               rollout=ctx.rollout, scorer=scorer, objective=objective, caps=caps, policy=prepared,
               optimizer=optimizer, scheduler=scheduler, loose=loose, metrics=metrics, resume=resume)
