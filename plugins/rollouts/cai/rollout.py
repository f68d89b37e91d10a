"""``rollout=cai``: generate a CAI stage's data into the run folder, then serve it like ``rollout=dataset``.

At build time (before the first step, with the run's initial model) the stage's JSONL is generated,
resumed, or reused when a finished file with the same settings exists (``<run>/cai_<stage>.jsonl``
or ``rollout.output``). The training rows (``prompt_completion`` for SL, soft-labelled ``pairwise``
for RL) are then read by the built-in dataset rollout, so any method of the right record kind trains
on them: ``method=sft`` (SL), ``method=dpo`` or ``method=reward_model loss=bt`` (RL).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from alignkit.api import RunContext

from .runner import run_stage
from .stages import check_config

FORMATS = {"sl": "prompt_completion", "rl": "pairwise"}


def output_path(ctx: RunContext, cfg: Any) -> Path:
    return Path(cfg.output) if cfg.output else ctx.run_dir / f"cai_{cfg.stage}.jsonl"


def build(ctx: RunContext, cfg: Any) -> Any:
    """CAI data (critique -> revision, or AI-labelled pairs) generated into the run, then read as a dataset."""
    check_config(cfg)
    out = output_path(ctx, cfg)
    if ctx.accelerator.is_main_process:
        model = ctx.accelerator.unwrap_model(ctx.policy)
        run_stage(ctx.cfg, cfg, ctx.registry, model, ctx.tokenizer, out, ctx.log, bool(ctx.cfg.trainer.progress))
    ctx.accelerator.wait_for_everyone()
    run_cfg = copy.deepcopy(ctx.cfg)
    with open_dict(run_cfg):
        data = run_cfg.data
        data.name, data.path, data.format = f"cai_{cfg.stage}", str(out.with_name(out.stem + ".train.jsonl")), FORMATS[cfg.stage]
        data.eval_path, data.eval_fraction, data.max_examples, data.eval_examples = None, cfg.eval_fraction, None, None
    dataset = ctx.registry.get("rollouts", "dataset", where="rollout")
    dataset_cfg = OmegaConf.merge(OmegaConf.structured(dataset.schema), {"shuffle": cfg.shuffle}) if dataset.schema \
        else OmegaConf.create({"name": "dataset", "shuffle": cfg.shuffle})
    return dataset.build(dataclasses.replace(ctx, cfg=run_cfg), dataset_cfg)
