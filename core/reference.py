"""Reference-model log-probs for methods that regularise towards the initial policy (DPO, KTO, ...).

Two modes, chosen by config:

- ``model``: a frozen copy of the initial policy (dropout off) scores every batch under ``no_grad``.
- ``cached``: the initial policy scores every training and held-out example once, before the first
  update, in the same padded batches the first epoch and the evaluation use; the sums are stored in
  ``<run>/reference_logps.safetensors`` and looked up by example index afterwards, so no reference
  model stays in memory. Because the cache is computed from the very batches training sees first, a
  DPO-style loss at step 0 is exactly ln 2 in both modes.

The cache is reused only when its fingerprint matches: a digest of everything that decides its values
(:meth:`ReferenceLogprobs._fingerprint_parts`) — the encoded token ids of every training and held-out
batch in the first epoch's order (so chat template, system prompt, SteerLM's attribute line,
truncation, data files, example limits, seed, shuffling, bucketing and batch sizes all count), the
data / rollout / model config nodes, the tokenizer, the initial model's weight files, the temperature
and the log-prob kernel settings. The parts are stored readable in the file's metadata, so a stale
cache is named by what changed; a fresh run recomputes it, a resumed run stops (a trained policy
cannot recompute the initial one's log-probs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .batches import TokenBatch
from .context import RunContext
from .errors import CheckpointError, ConfigError
from .interfaces import ListsExamples
from .logprobs import sequence_logprobs

CACHE_FILE = "reference_logps.safetensors"
MODES = ("model", "cached")

#: Parts of the fingerprint that are digests: named after the config keys when a cache is stale.
_DIGEST_PARTS = {"tokens": "other token ids (the encoded examples or their batches)",
                 "tokenizer": "another tokenizer", "model.weights": "other initial model weights"}
#: Files whose bytes decide a model folder's weights (config.json decides how they are read).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WEIGHT_NAMES = ("config.json", "adapter_config.json")
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: each file read once


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        with open(path, "rb") as handle:
            _FILE_DIGESTS[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _FILE_DIGESTS[key]


def weights_digest(model_cfg: Any) -> str:
    """sha256 of what decides the initial weights of the ``model`` node, unchanged by training or resume.

    A model folder (``model.path``, the converted SmolLM2): its weight files and ``config.json``
    (a LoRA checkpoint folder: its adapter plus its base model's digest). A random model
    (``model=tiny``): its architecture, seed and dtype and the torch / transformers versions that
    initialise it. The run's own LoRA adapters start as a no-op (B = 0), so ``model.lora`` counts
    through the config part, not here.
    """
    import transformers

    from .models import base_model_config, is_adapter_folder, resolve_model_folder

    folder = resolve_model_folder(model_cfg)
    if folder is None:
        init = {"tiny": OmegaConf.to_container(model_cfg.tiny, resolve=True) if "tiny" in model_cfg else None,
                "seed": model_cfg.get("seed"), "dtype": model_cfg.get("dtype"), "torch": torch.__version__,
                "transformers": transformers.__version__}
        return _sha256("random:" + json.dumps(init, sort_keys=True, default=str))
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _WEIGHT_NAMES))
    digest = [f"{p.relative_to(folder)}:{_file_sha256(p)}" for p in files]
    if is_adapter_folder(folder):
        digest.append("base:" + weights_digest(base_model_config(folder)))
    return _sha256("\n".join(digest))


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary and rules, chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"chat_template": getattr(tokenizer, "chat_template", None),
             "special": {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()},
             "pad": tokenizer.pad_token_id, "padding_side": getattr(tokenizer, "padding_side", None),
             "truncation_side": getattr(tokenizer, "truncation_side", None)}
    return _sha256(rules + json.dumps(extra, sort_keys=True, default=str))


def batches_digest(rollout: Any) -> str:
    """sha256 of every tensor (ids, masks, labels, indices) of ``rollout.all_batches`` for both splits,
    in order: what the cache's values are computed from, whatever produced the tokens."""
    digest = hashlib.sha256()
    for split in ("train", "eval"):
        digest.update(f"<{split}>".encode())
        for batch in rollout.all_batches(split):
            for key in sorted(f.name for f in dataclasses.fields(batch)):
                value = getattr(batch, key)
                digest.update(key.encode())
                if isinstance(value, torch.Tensor):
                    flat = value.detach().cpu().contiguous()
                    flat = flat.float() if flat.dtype == torch.bfloat16 else flat  # numpy has no bfloat16
                    digest.update(f"{tuple(flat.shape)}{flat.dtype}".encode())
                    digest.update(flat.numpy().tobytes())
                else:
                    digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _node_parts(node: Any, prefix: str, skip: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return {f"{prefix}.{k}": v for k, v in sorted(values.items()) if k not in skip}


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def stale_reason(stored: dict[str, Any] | None, parts: dict[str, Any]) -> str:
    """What differs between a cache's recorded parts and this run's, as a phrase for one log line."""
    if stored is None:
        return "was built by an older alignkit (no recorded fingerprint parts)"
    changed = [k for k in sorted(set(stored) | set(parts)) if stored.get(k) != parts.get(k)]
    # Config keys first: they say why; the digests they moved only confirm it.
    changed.sort(key=lambda k: k in _DIGEST_PARTS)
    if not changed:
        return "has another fingerprint"
    first = changed[0]
    if first in _DIGEST_PARTS:
        head = f"was built on {_DIGEST_PARTS[first]}"
    else:
        head = f"was built with {first}={_show(stored.get(first))}; this run has {first}={_show(parts.get(first))}"
    rest = changed[1:]
    return head + (f" (also differs: {', '.join(rest[:4])}{' ...' if len(rest) > 4 else ''})" if rest else "")


def _rows_per_example(batch: TokenBatch) -> int:
    return batch.num_rows // batch.num_examples  # 2 for pairs (chosen, rejected)


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
    def _fingerprint_parts(self) -> dict[str, Any]:
        """Everything that decides the cached values, readable (config values) or as digests."""
        cfg, ctx = self.ctx.cfg, self.ctx
        parts: dict[str, Any] = {"kind": ctx.kind, "temperature": float(self.temperature),
                                 "kernels": cfg.get("kernels"),
                                 "trainer.length_grouping": cfg.trainer.get("length_grouping"),
                                 "trainer.seed": cfg.trainer.seed, "trainer.batch_size": cfg.trainer.batch_size,
                                 "trainer.eval_batch_size": cfg.trainer.eval_batch_size}
        parts.update(_node_parts(cfg.data, "data"))
        parts.update(_node_parts(cfg.get("rollout"), "rollout", skip=()))
        parts.update(_node_parts(cfg.model, "model"))
        parts["tokens"] = batches_digest(ctx.rollout)
        parts["tokenizer"] = tokenizer_digest(ctx.tokenizer)
        parts["model.weights"] = weights_digest(cfg.model)
        return json.loads(json.dumps(parts, sort_keys=True, default=str))  # as stored: JSON values

    def _fingerprint(self, parts: dict[str, Any] | None = None) -> str:
        parts = self._fingerprint_parts() if parts is None else parts
        return _sha256(json.dumps(parts, sort_keys=True))

    def _load_or_build(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        from safetensors.torch import save_file

        rollout = self.ctx.rollout
        if not isinstance(rollout, ListsExamples):
            raise ConfigError("reference=cached needs a rollout that can list all its batches (rollout=dataset); "
                              "use reference=model instead")
        path = self.ctx.run_dir / CACHE_FILE
        parts = self._fingerprint_parts()
        fingerprint = self._fingerprint(parts)
        reason = "is missing"
        if path.exists():
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("fingerprint") == fingerprint:
                    self.ctx.log(f"reference log-probs: reusing {path}")
                    return {key: handle.get_tensor(key) for key in handle.keys()}
            stored = json.loads(metadata["parts"]) if "parts" in metadata else None
            reason = stale_reason(stored, parts)
        if self.ctx.resumed:
            raise CheckpointError(f"resume: reference cache {path} {reason}; reference log-probs cannot be "
                                  "recomputed from a trained policy (start a new run, or use method.reference=model)")
        if path.exists():
            self.ctx.log(f"reference log-probs: {path} {reason}: not reused, recomputing")
        cache = {split: self._compute(split) for split in ("train", "eval")}
        if self.ctx.accelerator.is_main_process:
            tmp = path.with_name(f".{CACHE_FILE}.tmp-{os.getpid()}")
            save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp),
                      metadata={"fingerprint": fingerprint, "parts": json.dumps(parts, sort_keys=True)})
            os.replace(tmp, path)
            self.ctx.log(f"reference log-probs: cached {len(cache['train'])} training and {len(cache['eval'])} "
                         f"held-out examples in {path}")
        return cache

    @torch.no_grad()
    def _compute(self, split: str) -> torch.Tensor:
        from tqdm.auto import tqdm

        rollout, policy = self.ctx.rollout, self.ctx.policy
        n = rollout.num_examples(split)
        if n == 0:  # no held-out split (data.eval_fraction=0): nothing to look up later
            return torch.empty(0, 0)
        values: torch.Tensor | None = None
        was_training = policy.training
        policy.eval()
        try:
            batches = rollout.all_batches(split)
            show = self.ctx.cfg.trainer.progress and self.ctx.accelerator.is_main_process
            for batch in tqdm(batches, desc=f"reference log-probs ({split})", disable=not show, leave=False):
                batch = batch.to(self.ctx.device)
                rows = _rows_per_example(batch)
                sums = sequence_logprobs(policy, batch, temperature=self.temperature).sum  # (R*B,)
                per_example = sums.view(rows, -1).T.cpu()  # (B, R)
                if values is None:
                    values = torch.full((n, rows), float("nan"))
                values[batch.index.cpu()] = per_example
        finally:
            policy.train(was_training)
        assert values is not None and not torch.isnan(values).any(), f"reference cache for {split} is incomplete"
        return values

    # ------------------------------------------------------------------ lookup
    @torch.no_grad()
    def __call__(self, batch: TokenBatch, split: str = "train") -> torch.Tensor:
        """(rows,) summed reference log-probs, rows in the batch's order."""
        if self.mode == "model":
            return sequence_logprobs(self.ctx.reference(), batch, temperature=self.temperature).sum
        values = self.cache[split][batch.index.cpu()]  # (B, R)
        return values.T.reshape(-1).to(batch.input_ids.device)  # (R*B,) component-major, like the batch
