"""The one generic training loop: rollout -> score -> update, for every method.

Offline methods are the same loop with a dataset rollout and no scorer. Per optimizer step the loop
draws ``trainer.grad_accum`` micro-batches from the *update stream* (each rollout batch, scored,
expanded by the objective's optional ``updates()``), weights their losses by the objective's
optional ``weight()`` (e.g. target tokens) so that batch 8 x accumulation 1 equals batch 1 x
accumulation 8, clips, steps, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import distributed
from . import lora as lora_support
from . import logprobs, memory
from .context import RunContext
from .errors import CheckpointError, ConfigError, TrainingError
from .interfaces import Batch, LossOutput
from .logprobs import PolicyModule
from .metrics import MetricsLogger, read_metrics, to_float
from .models import load_model
from .plugin_manager import get_manager
from .schedules import build_scheduler


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    final_model: Path | None = None


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def _check_finite_rewards(rewards: Any, batch: Batch, scorer_name: str) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
    expected = len(batch.get("prompts") or batch["input_ids"])
    if rewards.shape[0] != expected:
        raise TrainingError(f"scorer '{scorer_name}' returned {rewards.shape[0]} rewards for {expected} completions")
    if not torch.isfinite(rewards).all():
        raise TrainingError(f"scorer '{scorer_name}' returned a non-finite reward (NaN or inf)")
    return rewards.float()


class Trainer:
    """Builds a run from its config and trains it. ``Trainer(cfg, run_dir).fit()``."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        from accelerate import Accelerator
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars only: no "Loading weights" / "Writing shards"
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._bar = None
        self.registry = get_manager().registry
        self.method = self.registry.get("methods", cfg.method.name, where="method")
        tcfg = cfg.trainer
        if tcfg.max_steps < 1 or tcfg.batch_size < 1 or tcfg.grad_accum < 1:
            raise ConfigError("trainer.max_steps, trainer.batch_size and trainer.grad_accum must be >= 1")
        self.accelerator = Accelerator(**distributed.accelerator_kwargs(tcfg, distributed.launched_processes()))
        self.is_main = self.accelerator.is_main_process

        from alignkit import kernels

        kernels.set_backend(cfg.kernels)
        try:
            logprobs.set_length_grouping(tcfg.length_grouping)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        _seed_everything(tcfg.seed)
        self.resume_from = self._find_resume()
        if tcfg.release_memory:
            memory.release_freed_memory()  # before the weights: every big tensor of the run gets its own mmap
        policy, tokenizer = load_model(cfg.model)
        policy = lora_support.apply_lora(policy, cfg.model.get("lora"))  # model.lora.r > 0: PEFT adapters
        try:
            memory.enable_activation_checkpointing(policy, tcfg.activation_checkpointing)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        policy.train()
        self.tokenizer = tokenizer
        self.ctx = RunContext(cfg=cfg, run_dir=self.run_dir, registry=self.registry, policy=policy,
                              tokenizer=tokenizer, accelerator=self.accelerator, kind=self.method.kind_for(cfg),
                              log=self.log, resumed=self.resume_from is not None)
        if self.resume_from is not None:
            self._load_weights(policy, self.resume_from[0])
        self.rollout = self.registry.get("rollouts", cfg.rollout.name, where="rollout").build(self.ctx, cfg.rollout)
        self.ctx.rollout = self.rollout
        self.scorer = None
        if cfg.scorer.name != "none":
            self.scorer = self.registry.get("scorers", cfg.scorer.name, where="scorer").build(self.ctx, cfg.scorer)
        self.objective = self.method.build(self.ctx)
        params = [p for p in policy.parameters() if p.requires_grad]
        # extra_parameters() may hold tensors (trained like the policy) or param-group dicts with
        # their own options, e.g. {"params": value_head.parameters(), "lr": 1e-4}.
        extra = list(getattr(self.objective, "extra_parameters", lambda: [])())
        params += [p for p in extra if not isinstance(p, dict)]
        self.optimizer = self._build_optimizer(params)
        for group in (e for e in extra if isinstance(e, dict)):
            self.optimizer.add_param_group({**group, "params": list(group["params"])})
        self.scheduler = build_scheduler(tcfg.scheduler, self.optimizer, tcfg.max_steps)
        # The policy goes to accelerate inside a PolicyModule, whose forward is the log-prob path, so DDP /
        # FSDP / DeepSpeed see every method's forward. Optimised tensors outside it (value and reward
        # heads, critics) start equal everywhere and have their gradients averaged like DDP's.
        wrapped = PolicyModule(policy)
        if any(p.requires_grad for p in wrapped.parameters()):
            self.policy, self.optimizer = self.accelerator.prepare(wrapped, self.optimizer)
        else:  # a frozen trunk (reward heads only): nothing for DDP to synchronise
            self.policy, self.optimizer = wrapped.to(self.accelerator.device), self.accelerator.prepare(self.optimizer)
        self._loose = distributed.loose_parameters(self.optimizer, self.policy)
        distributed.broadcast_parameters(self._loose, self.accelerator)
        self.ctx.policy = self.policy
        self.step = 0
        resume_step = int(self.resume_from[1]["step"]) if self.resume_from is not None else None
        self.metrics = MetricsLogger.from_config(cfg, self.run_dir, enabled=self.is_main, resume_step=resume_step)

    # ------------------------------------------------------------------ setup
    def log(self, line: str) -> None:
        if self.is_main:
            if self._bar is not None:
                self._bar.write(line)
            else:
                print(line, flush=True)

    def _build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        from hydra.utils import instantiate

        try:
            return instantiate(self.cfg.trainer.optimizer, params=params)
        except Exception as exc:  # noqa: BLE001 - Hydra wraps import and type errors
            raise ConfigError(f"trainer.optimizer: cannot build {self.cfg.trainer.optimizer.get('_target_')}: "
                              f"{str(exc).splitlines()[0]}") from exc

    def _find_resume(self) -> tuple[Path, dict] | None:
        if not self.cfg.resume:
            return None
        resume_dir = Path(self.cfg.resume)
        if not resume_dir.is_dir():
            raise CheckpointError(f"resume={resume_dir}: no such run folder")
        found = ckpt.latest_valid(resume_dir)
        if found is None:
            raise CheckpointError(f"resume={resume_dir}: no intact checkpoint in {resume_dir / 'checkpoints'} "
                                  "(set trainer.save_every to write some)")
        checkpoint, manifest = found
        for key, value in (("method", self.cfg.method.name), ("model", self.cfg.model.name)):
            if manifest.get(key) != value:
                raise CheckpointError(f"resume={resume_dir}: that run trained {key} '{manifest.get(key)}', "
                                      f"this one asks for '{value}'")
        return checkpoint, manifest

    def _load_weights(self, model: torch.nn.Module, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        if lora_support.is_lora(model):
            lora_support.load_adapter(model, checkpoint / "model")
            return
        state: dict[str, torch.Tensor] = {}
        # model.safetensors or model-0000i-of-0000n.safetensors; not the heads save_extras wrote beside them
        for shard in sorted((checkpoint / "model").glob("model*.safetensors")):
            state.update(load_file(str(shard)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied lm_head weights are saved once; anything else missing means a different model.
        missing = [m for m in missing if "lm_head" not in m]
        if missing or unexpected:
            raise CheckpointError(f"{checkpoint}: weights do not fit model '{self.cfg.model.name}' "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

    def _restore(self, checkpoint: Path, manifest: dict) -> None:
        state = ckpt.load_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rollout.load_state_dict(state["rollout"])
        if hasattr(self.objective, "load_state_dict") and "objective" in state:
            self.objective.load_state_dict(state["objective"])
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        # The log must read as if the run had never stopped: drop lines written after the checkpoint
        # (and a line torn by a kill), and the temporary folders of a write the kill interrupted.
        if self.is_main:
            records = read_metrics(self.run_dir)
            kept = records[: state["metrics_records"]] if "metrics_records" in state else \
                [r for r in records if r["step"] <= self.step]
            tmp = self.run_dir / ".metrics.jsonl.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.run_dir / "metrics.jsonl")
            removed = ckpt.remove_partial_writes(self.run_dir)
            # Checkpoints newer than this one failed verification (latest_valid warned about each):
            # this run will write those steps again.
            for newer in [c for c in ckpt.list_checkpoints(self.run_dir) if c.name > checkpoint.name]:
                shutil.rmtree(newer, ignore_errors=True)
                removed.append(newer.name)
            ckpt.prune(self.run_dir, self.cfg.trainer.keep_last)  # a kill may have come before the pruning
            if removed:
                self.log(f"removed what an interrupted run left behind: {', '.join(removed)}")
        self.log(f"resumed from {checkpoint} at step {self.step}")

    def _save(self) -> None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rollout": self.rollout.state_dict(),
            "rng": ckpt.rng_state(),
            "metrics_records": len(read_metrics(self.run_dir)),  # the log as it was at this step
        }
        if hasattr(self.objective, "state_dict"):
            state["objective"] = self.objective.state_dict()
        # The model node too, so that a checkpoint alone says which base model its LoRA adapter belongs to.
        meta = {"method": self.cfg.method.name, "model": self.cfg.model.name,
                "model_config": OmegaConf.to_container(self.cfg.model, resolve=True)}
        ckpt.save_checkpoint(self.run_dir, self.step, self.accelerator.unwrap_model(self.policy), self.tokenizer,
                             state, meta, self.cfg.trainer.keep_last,
                             extras=getattr(self.objective, "save_extras", None))  # heads beside the model

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics: the objective's per-example values over every eval batch, summarized."""
        evaluate = getattr(self.objective, "evaluate", None)
        if evaluate is None:
            return {}
        self.policy.eval()
        values: dict[str, list[torch.Tensor]] = {}
        try:
            for batch in self._progress(self.rollout.eval_batches(), desc="eval", leave=False):
                batch = self._to_device(batch)
                if self.scorer is not None and "rewards" not in batch:
                    batch["rewards"] = _check_finite_rewards(self.scorer(batch), batch, self.cfg.scorer.name)
                for key, value in evaluate(batch).items():
                    values.setdefault(key, []).append(value.detach().float().reshape(-1).cpu())
        finally:
            self.policy.train()
        if not values:
            return {}
        joined = {k: torch.cat(v) for k, v in values.items()}
        summarize = getattr(self.objective, "summarize", None)
        if summarize is not None:
            return {k: float(v) for k, v in summarize(joined).items()}
        return {k: float(v.mean()) for k, v in joined.items()}

    # ------------------------------------------------------------------ training
    def _to_device(self, batch: Batch) -> Batch:
        device = self.accelerator.device
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _progress(self, iterable: Any, **kwargs: Any) -> Any:
        if not (self.is_main and self.cfg.trainer.progress):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs)

    def _update_stream(self) -> Iterator[Batch]:
        """Scored rollout batches, expanded into micro-batches by the objective's ``updates``."""
        updates = getattr(self.objective, "updates", None)
        pending = getattr(self.objective, "pending_updates", None)
        if pending is not None:
            # Micro-batches of a rollout a checkpoint cut in the middle (restored with the objective's
            # state): finish it before sampling the next one, as the uninterrupted run did.
            yield from pending()
        while True:
            batch = self._to_device(self.rollout.next_batch(self.policy))
            if self.scorer is not None:
                batch["rewards"] = _check_finite_rewards(self.scorer(batch), batch, self.cfg.scorer.name)
            if updates is None:
                yield batch
            else:
                yield from updates(batch)

    def _weight(self, batch: Batch) -> float:
        weight = getattr(self.objective, "weight", None)
        return float(weight(batch)) if weight is not None else 1.0

    def _train_step(self, stream: Iterator[Batch]) -> dict[str, float]:
        accum = self.cfg.trainer.grad_accum
        micro = [next(stream) for _ in range(accum)]
        weights = [self._weight(b) for b in micro]
        # Shares of the global batch (every process's micro-batches): see alignkit.distributed.
        shares, _ = distributed.global_weights(weights, self.accelerator)
        scale = 1.0 / self.accelerator.num_processes  # per-process part of the logged (summed) metrics
        sums: dict[str, float] = {}
        for index, (batch, share) in enumerate(zip(micro, shares)):
            sync = index == accum - 1
            context = self.accelerator.no_sync(self.policy) if not sync else contextlib.nullcontext()
            with context:
                out: LossOutput = self.objective(batch)
                if not distributed.all_finite(out.loss.detach(), self.accelerator):
                    intact = ckpt.list_checkpoints(self.run_dir)
                    raise TrainingError(
                        f"non-finite loss ({float(out.loss.detach())}) at step {self.step + 1}; stopped. " + (
                            f"The last good checkpoint is {intact[-1]} (continue with resume={self.run_dir})"
                            if intact else "No checkpoint was written yet (see trainer.save_every)"))
                self.accelerator.backward(out.loss * share)
            sums["loss"] = sums.get("loss", 0.0) + scale * share * float(out.loss.detach())
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0.0) + scale * share * to_float(value)
        sums = distributed.reduce_metrics(sums, self.accelerator)
        distributed.average_gradients(self._loose, self.accelerator)
        if self.cfg.trainer.max_grad_norm > 0:
            # Every optimised tensor, not only the policy's: value and reward heads are clipped too.
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = self.accelerator.clip_grad_norm_(params, self.cfg.trainer.max_grad_norm)
            sums["grad_norm"] = to_float(norm)
        sums["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def fit(self) -> RunResult:
        tcfg = self.cfg.trainer
        result = RunResult(run_dir=self.run_dir, steps=0)
        if self.resume_from is not None:
            self._restore(*self.resume_from)
            summary_path = self.run_dir / "summary.json"
            if summary_path.exists():
                result.eval_before = json.loads(summary_path.read_text()).get("eval_before", {})
        else:
            result.eval_before = self.evaluate()
            if result.eval_before:
                self.metrics.log(0, result.eval_before, split="eval")
                self.log("held-out before training: " + format_metrics(result.eval_before))
            self._write_summary(result)
        stream = self._update_stream()
        bar = self._progress(range(self.step, tcfg.max_steps), desc=f"{self.cfg.method.name}", initial=self.step,
                             total=tcfg.max_steps, unit="step")
        self._bar = bar if hasattr(bar, "set_postfix") else None
        started = time.perf_counter()
        for _ in bar:
            values = self._train_step(stream)
            self.step += 1
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{values['loss']:.4f}")
            if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                values["elapsed_s"] = time.perf_counter() - started
                self.metrics.log(self.step, values)
            if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step < tcfg.max_steps:
                scores = self.evaluate()
                if scores:
                    self.metrics.log(self.step, scores, split="eval")
                    self.log(f"held-out at step {self.step}: " + format_metrics(scores))
            if tcfg.save_every and self.step % tcfg.save_every == 0:
                self._save()
        self._bar = None
        result.steps = self.step
        # The last checkpoint comes before the held-out evaluation, so that a run killed after it
        # resumes into exactly one "after" line in metrics.jsonl.
        if tcfg.save_every and self.step % tcfg.save_every != 0:
            self._save()
        result.eval_after = self.evaluate()
        if result.eval_after:
            self.metrics.log(self.step, result.eval_after, split="eval")
        if self.is_main:
            result.final_model = self.run_dir / "final"

            def extras(folder: Path) -> None:  # inside the atomic write: final/ appears complete or not at all
                # A LoRA policy is saved merged (a plain HF folder), its adapter beside it in final/adapter.
                lora_support.save_adapter(self.policy, folder / "adapter")
                if hasattr(self.objective, "save_extras"):
                    self.objective.save_extras(folder)

            ckpt.write_model(lora_support.exportable(self.policy), self.tokenizer, result.final_model, extras=extras)
        self.accelerator.wait_for_everyone()
        self._write_summary(result)
        self.metrics.close()
        return result

    def _write_summary(self, result: RunResult) -> None:
        if not self.is_main:
            return
        summary = {"method": self.cfg.method.name, "model": self.cfg.model.name, "steps": result.steps,
                   "eval_before": result.eval_before, "eval_after": result.eval_after,
                   "final_model": str(result.final_model) if result.final_model else None}
        tmp = self.run_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, self.run_dir / "summary.json")


def format_metrics(values: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}" for k, v in values.items())


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config and the loaded plugins, for reproducibility."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    (run_dir / "plugins.json").write_text(json.dumps(get_manager().report(), indent=1))


def train(cfg: DictConfig, run_dir: Path) -> RunResult:
    """Train ``cfg`` into ``run_dir`` and return the before/after held-out metrics."""
    run_dir = Path(run_dir)
    write_run_files(cfg, run_dir)
    return Trainer(cfg, run_dir).fit()
