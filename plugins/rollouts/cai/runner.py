"""Run one CAI data stage from a composed run config: shared by ``rollout=cai`` and ``alignkit cai generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from alignkit.api import ConfigError, tokenizer_digest, weights_digest

from .constitution import load_constitution
from .feedback import FeedbackModel
from .generation import ChatGenerator
from .stages import check_config, generate_rl, generate_sl, load_prompts, settings_of, training_rows
from .store import ResumableJsonl, write_jsonl_atomic


def model_id(model_cfg: Any) -> str:
    """What identifies the generating model in a file's settings: its name, where it comes from and a
    digest of its weights (new weights in the same folder are another model)."""
    return f"{model_cfg.get('name')}:{model_cfg.get('path') or model_cfg.get('source')}:{weights_digest(model_cfg)[:16]}"


def load_feedback_model(path: str, device: Any) -> tuple[Any, Any]:
    from alignkit.api import ModelConfig, load_model

    model, tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "feedback", "path": path}))
    model.eval().requires_grad_(False)
    return model.to(device), tokenizer


def run_stage(run_cfg: Any, cfg: Any, registry: Any, model: Any, tokenizer: Any, out: Path,
              log: Callable[[str], None] = print, show_progress: bool = True) -> tuple[list[dict], Path]:
    """Generate (or resume, or reuse) the stage's JSONL at ``out``; returns its rows and the training file.

    Args:
        run_cfg: the composed run config (``data``, ``model``, ``trainer`` are read).
        cfg: the ``rollout=cai`` node (:class:`.stages.CAIDataConfig`).
        registry: the plugin registry (data formats).
        model, tokenizer: the model that answers (and, without ``cfg.feedback_model``, judges).
        out: the generated file; the training rows go beside it as ``<stem>.train.jsonl``.
    """
    check_config(cfg)
    stage = cfg.stage
    seed = int(run_cfg.trainer.seed if cfg.seed is None else cfg.seed)
    constitution = load_constitution(cfg.constitution)
    prompts = load_prompts(run_cfg.data, registry, seed, limit=cfg.num_prompts, single_turn_only=cfg.single_turn_only)
    feedback_id = model_id(OmegaConf.merge(run_cfg.model, {"name": "feedback", "path": cfg.feedback_model})) \
        if cfg.feedback_model else model_id(run_cfg.model)
    settings = settings_of(cfg, stage, constitution, seed, model_id(run_cfg.model), feedback_id, run_cfg.data, prompts,
                           tokenizer_digest(tokenizer))
    store = ResumableJsonl(out, settings)
    rows = store.finished()
    if rows is not None:
        log(f"cai: reusing {out} ({len(rows)} rows, same settings)")
    else:
        generator = ChatGenerator(model, tokenizer, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_p=cfg.top_p, max_prompt_tokens=cfg.max_prompt_tokens)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=f"cai {stage}", unit="prompt", dynamic_ncols=True)
        progress = bar.update if bar is not None else (lambda n: None)
        log(f"cai: stage {stage}, {len(prompts)} prompts, constitution '{constitution.name}' -> {out}")
        try:
            if stage == "sl":
                rows = generate_sl(generator, constitution, prompts, cfg, seed, store, progress)
            else:
                if cfg.feedback_model:
                    judge_model, judge_tokenizer = load_feedback_model(cfg.feedback_model, next(model.parameters()).device)
                else:
                    judge_model, judge_tokenizer = model, tokenizer
                feedback = FeedbackModel(judge_model, judge_tokenizer, template=cfg.feedback_template,
                                         answer_prefix=cfg.answer_prefix, batch_size=cfg.batch_size)
                rows = generate_rl(generator, feedback, constitution, prompts, cfg, seed, store, progress)
        finally:
            if bar is not None:
                bar.close()
    train = training_rows(rows, stage)
    if not train:
        raise ConfigError(f"cai: stage {stage} produced no usable training rows in {out} (all empty or skipped)")
    train_path = write_jsonl_atomic(out.with_name(out.stem + ".train.jsonl"), train)
    return rows, train_path
