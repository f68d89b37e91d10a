"""Reference-model log-probs for methods that regularise towards the initial policy (DPO, KTO, ...).

Two modes, chosen by config:

- ``model``: a frozen copy of the initial policy (dropout off) scores every batch under ``no_grad``.
- ``cached``: the initial policy scores every training and held-out example once, before the first
  update, in the same padded batches the first epoch and the evaluation use; the sums are stored in
  ``<run>/reference_logps.safetensors`` and looked up by example index afterwards, so no reference
  model stays in memory. Because the cache is computed from the very batches training sees first, a
  DPO-style loss at step 0 is exactly ln 2 in both modes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .context import RunContext
from .errors import ConfigError
from .logprobs import sequence_logprobs

CACHE_FILE = "reference_logps.safetensors"
MODES = ("model", "cached")


def _rows_per_example(batch: dict) -> int:
    rows = batch["input_ids"].shape[0]
    examples = batch["index"].shape[0] if "index" in batch else rows
    return rows // examples


class ReferenceLogprobs:
    """Sequence-summed reference log-probs for every row of a batch.

    Args:
        ctx: the run context (its policy is the initial policy while this is built).
        mode: ``model`` or ``cached``.
        temperature: the temperature the log-probs are computed at.
    """

    def __init__(self, ctx: RunContext, mode: str, *, temperature: float = 1.0) -> None:
        if mode not in MODES:
            raise ConfigError(f"reference mode {mode!r}; expected one of {MODES} (or 'none' where the method allows it)")
        self.ctx, self.mode, self.temperature = ctx, mode, temperature
        self.cache: dict[str, torch.Tensor] = {}
        if mode == "cached":
            self.cache = self._load_or_build()

    # ------------------------------------------------------------------ cache
    def _fingerprint(self) -> str:
        cfg = self.ctx.cfg
        key = {"model": cfg.model.name, "model_path": cfg.model.path, "data": cfg.data.path, "eval": cfg.data.eval_path,
               "max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length,
               "n_train": len(getattr(self.ctx.rollout, "train", [])), "n_eval": len(getattr(self.ctx.rollout, "held_out", [])),
               "temperature": self.temperature, "seed": cfg.trainer.seed, "batch_size": cfg.trainer.batch_size}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _load_or_build(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        from safetensors.torch import save_file

        rollout = self.ctx.rollout
        if rollout is None or not hasattr(rollout, "all_batches"):
            raise ConfigError("reference=cached needs a rollout that can list all its batches (rollout=dataset); "
                              "use reference=model instead")
        path = self.ctx.run_dir / CACHE_FILE
        fingerprint = self._fingerprint()
        if path.exists():
            with safe_open(str(path), "pt") as handle:
                if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                    self.ctx.log(f"reference log-probs: reusing {path}")
                    return {key: handle.get_tensor(key) for key in handle.keys()}
        if self.ctx.resumed:
            from .errors import CheckpointError

            raise CheckpointError(f"resume: {path} is missing or from another setup; reference log-probs cannot "
                                  "be recomputed from a trained policy (start a new run or use reference=model)")
        cache = {split: self._compute(split) for split in ("train", "eval")}
        if self.ctx.accelerator.is_main_process:
            tmp = path.with_name(f".{CACHE_FILE}.tmp-{os.getpid()}")
            save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp), metadata={"fingerprint": fingerprint})
            os.replace(tmp, path)
            self.ctx.log(f"reference log-probs: cached {len(cache['train'])} training and {len(cache['eval'])} "
                         f"held-out examples in {path}")
        return cache

    @torch.no_grad()
    def _compute(self, split: str) -> torch.Tensor:
        from tqdm.auto import tqdm

        rollout, policy = self.ctx.rollout, self.ctx.policy
        n = len(rollout.train) if split == "train" else len(rollout.held_out)
        if n == 0:  # no held-out split (data.eval_fraction=0): nothing to look up later
            return torch.empty(0, 0)
        values: torch.Tensor | None = None
        was_training = policy.training
        policy.eval()
        try:
            batches = rollout.all_batches(split)
            show = self.ctx.cfg.trainer.progress and self.ctx.accelerator.is_main_process
            for batch in tqdm(batches, desc=f"reference log-probs ({split})", disable=not show, leave=False):
                batch = {k: (v.to(self.ctx.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                rows = _rows_per_example(batch)
                sums = sequence_logprobs(policy, batch, temperature=self.temperature).sum  # (R*B,)
                per_example = sums.view(rows, -1).T.cpu()  # (B, R)
                if values is None:
                    values = torch.full((n, rows), float("nan"))
                values[batch["index"].cpu()] = per_example
        finally:
            policy.train(was_training)
        assert values is not None and not torch.isnan(values).any(), f"reference cache for {split} is incomplete"
        return values

    # ------------------------------------------------------------------ lookup
    @torch.no_grad()
    def __call__(self, batch: dict, split: str = "train") -> torch.Tensor:
        """(rows,) summed reference log-probs, rows in the batch's order."""
        if self.mode == "model":
            return sequence_logprobs(self.ctx.reference(), batch, temperature=self.temperature).sum
        values = self.cache[split][batch["index"].cpu()]  # (B, R)
        return values.T.reshape(-1).to(batch["input_ids"].device)  # (R*B,) component-major, like the batch
