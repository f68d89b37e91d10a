"""``scorer=judge``: an LLM judge whose score is read from the probabilities of its answer tokens
(:class:`alignkit.judge.JudgeScorer`; the judge is the frozen initial policy or ``scorer.model_path``)."""

from __future__ import annotations

from typing import Any

from alignkit.api import JudgeScorer, RunContext


def build(ctx: RunContext, cfg: Any) -> JudgeScorer:
    """An LLM judge: score = expected value of its answer tokens' probabilities (no text parsing)."""
    if cfg.model_path:
        from omegaconf import OmegaConf

        from alignkit.api import ModelConfig, load_model

        model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "judge", "path": cfg.model_path})
        model, tokenizer = load_model(model_cfg)
        model.eval().requires_grad_(False)
        model.to(ctx.device)
    else:
        model, tokenizer = None, ctx.tokenizer
    return JudgeScorer(ctx, cfg, model, tokenizer)
