"""A run's state on disk: finding the checkpoint to resume, restoring it, saving one, and the summary.

What a checkpoint holds is the whole state of a run — weights (``model/``), optimizer, scheduler,
every RNG, the rollout's position, the objective's state and the micro-batches of a rollout cut in the
middle — so that a resumed run is bit-identical to one that never stopped, ``metrics.jsonl`` included
(lines written after the checkpoint, or torn by a kill, are dropped on restore). The write itself is
:mod:`alignkit.checkpoint`'s (atomic, checksummed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import distributed
from . import lora as lora_support
from .errors import CheckpointError, TrainingError
from .metrics import read_metrics
from .probe import ProbeResult, changes

SUMMARY = "summary.json"


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from and its manifest."""

    checkpoint: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    final_model: Path | None = None
    probe_before: ProbeResult | None = None  # answers to the probe's prompts (``probe=...``, alignkit.probe)
    probe_after: ProbeResult | None = None
    probe_report: list[str] = field(default_factory=list)  # the probe's lines of the run's last lines


def find_resume(cfg: DictConfig) -> ResumePoint | None:
    """The newest intact checkpoint of ``cfg.resume`` (None for a fresh run); CheckpointError if unusable."""
    if not cfg.resume:
        return None
    resume_dir = Path(cfg.resume)
    if not resume_dir.is_dir():
        raise CheckpointError(f"resume={resume_dir}: no such run folder")
    found = ckpt.latest_valid(resume_dir)
    if found is None:
        raise CheckpointError(f"resume={resume_dir}: no intact checkpoint in {resume_dir / 'checkpoints'} "
                              "(set trainer.save_every to write some)")
    checkpoint, manifest = found
    for key, value in (("method", cfg.method.name), ("model", cfg.model.name)):
        if manifest.get(key) != value:
            raise CheckpointError(f"resume={resume_dir}: that run trained {key} '{manifest.get(key)}', "
                                  f"this one asks for '{value}'")
    return ResumePoint(checkpoint, manifest)


def load_weights(model: torch.nn.Module, checkpoint: Path, model_name: str) -> None:
    """Load a checkpoint's ``model/`` weights (or LoRA adapter) into ``model``; CheckpointError if they do not fit."""
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
        raise CheckpointError(f"{checkpoint}: weights do not fit model '{model_name}' "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def restore_metrics_log(run_dir: Path, checkpoint: Path, state: dict[str, Any], keep_last: int) -> list[str]:
    """Make the run folder read as if the run had never stopped after ``checkpoint``.

    Drops ``metrics.jsonl`` lines written after the checkpoint (and a line torn by a kill), the
    temporary folders of an interrupted write, and checkpoints newer than this one (they failed
    verification; the run writes those steps again). Returns the names of what was removed.
    """
    records = read_metrics(run_dir)
    step = int(state["step"])
    kept = records[: state["metrics_records"]] if "metrics_records" in state else [r for r in records if r["step"] <= step]
    tmp = run_dir / ".metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, run_dir / "metrics.jsonl")
    removed = ckpt.remove_partial_writes(run_dir)
    for newer in [c for c in ckpt.list_checkpoints(run_dir) if c.name > checkpoint.name]:
        shutil.rmtree(newer, ignore_errors=True)
        removed.append(newer.name)
    ckpt.prune(run_dir, keep_last)  # a kill may have come before the pruning
    return removed


def save(run_dir: Path, cfg: DictConfig, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
         extras: Callable[[Path], None] | None) -> None:
    """Write ``checkpoints/step-<step>`` with ``state`` plus the log position, the RNGs and the run's identity."""
    state = {**state, "step": step, "rng": ckpt.rng_state(),
             "metrics_records": len(read_metrics(run_dir))}  # the log as it was at this step
    # The model node too, so that a checkpoint alone says which base model its LoRA adapter belongs to.
    meta = {"method": cfg.method.name, "model": cfg.model.name,
            "model_config": OmegaConf.to_container(cfg.model, resolve=True)}
    # The encoding settings go beside the weights, so consumers encode text the way the run did.
    ckpt.save_checkpoint(run_dir, step, model, tokenizer, state, meta, cfg.trainer.keep_last,
                         extras=ckpt.with_encoding(cfg, tokenizer, extras))


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def write_summary(cfg: DictConfig, result: RunResult) -> None:
    """``summary.json``: the held-out metrics (and the answer probe's measures) before and after, written atomically."""
    summary = {"method": cfg.method.name, "model": cfg.model.name, "steps": result.steps,
               "eval_before": result.eval_before, "eval_after": result.eval_after,
               **{f"probe_{label}": probe.summary for label, probe in (("before", result.probe_before),
                                                                       ("after", result.probe_after)) if probe},
               **({"probe_change": changes(result.probe_before, result.probe_after)}
                  if result.probe_before and result.probe_after else {}),
               "final_model": str(result.final_model) if result.final_model else None}
    tmp = result.run_dir / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, result.run_dir / SUMMARY)


def write_final_model(run_dir: Path, cfg: DictConfig, policy: Any, tokenizer: Any,
                      save_extras: Callable[[Path], None] | None) -> Path:
    """``<run>/final``: the policy as a plain HF folder (a LoRA policy merged, its adapter in ``final/adapter``),
    plus the encoding settings and the objective's extras, written atomically (complete or not at all)."""
    target = Path(run_dir) / "final"

    def extras(folder: Path) -> None:
        lora_support.save_adapter(policy, folder / "adapter")
        if save_extras is not None:
            save_extras(folder)

    ckpt.write_model(lora_support.exportable(policy), tokenizer, target, extras=ckpt.with_encoding(cfg, tokenizer, extras))
    return target


def check_finite(loss: torch.Tensor, step: int, run_dir: Path, accelerator: Any) -> None:
    """TrainingError naming the step and the last good checkpoint if ``loss`` is not finite on any process."""
    if distributed.all_finite(loss, accelerator):
        return
    intact = ckpt.list_checkpoints(run_dir)
    raise TrainingError(f"non-finite loss ({float(loss)}) at step {step}; stopped. " + (
        f"The last good checkpoint is {intact[-1]} (continue with resume={run_dir})"
        if intact else "No checkpoint was written yet (see trainer.save_every)"))
