"""Reference-model log-probs for methods that regularise towards the initial policy (DPO, KTO, ...).

Two modes, chosen by config:

- ``model``: a frozen copy of the initial policy (dropout off) scores every batch under ``no_grad``.
- ``cached``: the initial policy scores each example once, in the same padded batch the first
  epoch or the evaluation uses, and the sums are stored in ``<run>/reference_logps.safetensors``
  (NaN for examples not scored yet) and looked up by example index, so no reference model stays in
  memory. Only what the run uses is scored: before the first update, the training batches its
  ``trainer.max_steps`` steps draw (``max_steps x grad_accum`` batches of the first epoch; all of
  them once a run reaches a second epoch); held-out batches when the evaluation before training
  first reaches them, from the policy's own forward there (the policy *is* the reference then). A
  two-step run on the bundled 2,047 pairs scores 8 training pairs, not 2,047. Because each value
  comes from the very batch training or evaluation sees first, a DPO-style loss at step 0 is exactly
  ln 2 in both modes.

  Examples the cache lacks later — a resume with a larger ``trainer.max_steps``, a fresh run given a
  partial cache, a resumed run without its file, an update stream that draws more batches than
  planned — are scored when first needed, in their first-epoch batches, by the initial weights: the
  policy itself while no update has changed it (its parameters' version counters), else a reference
  reloaded from the run's ``model`` config (the LoRA base with adapters off), so the values are those
  an uninterrupted run stores, and the file grows to include them.

The cache is reused only when its fingerprint matches: a digest of everything that decides its values
(:meth:`ReferenceLogprobs._fingerprint_parts`) — the encoded token ids of every training and held-out
batch in the first epoch's order (so chat template, system prompt, SteerLM's attribute line,
truncation, data files, example limits, seed, shuffling, bucketing and batch sizes all count), the
data / rollout / model config nodes, the tokenizer, the initial model's weight files, the temperature
and the log-prob kernel settings. The parts are stored readable in the file's metadata, so a stale
cache is named by what changed; a fresh run recomputes it, a resumed run stops (its earlier steps used
values of another setup). A resumed run whose file is missing recomputes it from the reloaded initial
weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterable

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


def _weights_version(model: torch.nn.Module) -> dict[int, int]:
    """Each parameter's in-place version counter, by identity: any update of the weights changes it."""
    return {id(p): p._version for p in model.parameters()}


class ReferenceLogprobs:
    """Sequence-summed reference log-probs for every row of a batch.

    Args:
        ctx: the run context (its policy is the initial policy while this is built, unless resumed).
        mode: ``model`` or ``cached``.
        temperature: the temperature the log-probs are computed at.
    """

    def __init__(self, ctx: RunContext, mode: str, *, temperature: float = 1.0) -> None:
        if mode not in MODES:
            raise ConfigError(f"reference mode {mode!r}; expected one of {MODES} (or 'none' where the method allows it)")
        self.ctx, self.mode, self.temperature = ctx, mode, temperature
        self.cache: dict[str, torch.Tensor] = {}
        self._metadata: dict[str, str] = {}
        self._loaded: torch.nn.Module | None = None  # the initial weights reloaded, once the policy has trained
        # Until the first update the policy *is* the initial policy (not after a resume): its parameters'
        # version counters, which every in-place update (an optimizer step, a weight load) moves on.
        self._initial_versions = None if ctx.resumed else _weights_version(ctx.policy)
        if mode == "cached":
            self.cache = self._load_or_build()

    # ------------------------------------------------------------------ cache
    def _fingerprint_parts(self) -> dict[str, Any]:
        """Everything that decides the cached values, readable (config values) or as digests."""
        cfg, ctx = self.ctx.cfg, self.ctx
        parts: dict[str, Any] = {"kind": ctx.kind, "temperature": float(self.temperature),
                                 "kernels": cfg.get("kernels"),
                                 "trainer.length_grouping": cfg.trainer.get("length_grouping"),
                                 "trainer.shared_prefix": cfg.trainer.get("shared_prefix"),
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

    @property
    def path(self) -> Path:
        return self.ctx.run_dir / CACHE_FILE

    def _load_or_build(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        rollout = self.ctx.rollout
        if not isinstance(rollout, ListsExamples):
            raise ConfigError("reference=cached needs a rollout that can list all its batches (rollout=dataset); "
                              "use reference=model instead")
        path = self.path
        parts = self._fingerprint_parts()
        fingerprint = self._fingerprint(parts)
        self._metadata = {"fingerprint": fingerprint, "parts": json.dumps(parts, sort_keys=True)}
        cache: dict[str, torch.Tensor] = {}
        if path.exists():
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("fingerprint") == fingerprint:
                    cache = {key: handle.get_tensor(key) for key in handle.keys()}
            if cache:
                self.ctx.log(f"reference log-probs: reusing {path}")
            else:
                stored = json.loads(metadata["parts"]) if "parts" in metadata else None
                reason = stale_reason(stored, parts)
                if self.ctx.resumed:
                    raise CheckpointError(f"resume: reference cache {path} {reason}; reference log-probs cannot be "
                                          "recomputed from a trained policy (start a new run, or use "
                                          "method.reference=model)")
                self.ctx.log(f"reference log-probs: {path} {reason}: not reused, recomputing")
        # A resume without its file (deleted, or a run stopped before it was written) recomputes it from
        # the reloaded initial weights: the same values the run would have stored.
        self.cache = cache
        added = self._fill("train", self._planned_batches())
        # Held-out batches are cached when the evaluation before training reaches them (see __call__),
        # from the policy's own forward. Wrapped for several processes (DDP broadcasts, FSDP shards),
        # the policy would no longer count as the initial one by then: score them now, as it is.
        if getattr(self.ctx.accelerator, "num_processes", 1) > 1:
            added += self._fill("eval", rollout.all_batches("eval"))
        rows = self.cache["train"].shape[1] if self.cache.get("train") is not None else 0
        for split in ("train", "eval"):
            n = rollout.num_examples(split)
            if split not in self.cache or (self.cache[split].numel() == 0 and n and rows):
                self.cache[split] = torch.full((n, rows), float("nan")) if n and rows else torch.empty(0, 0)
        if added:
            self._save()
            self.ctx.log(f"reference log-probs: {self._count('train')} of {rollout.num_examples('train')} training "
                         f"examples cached in {path} (the batches trainer.max_steps={self.ctx.cfg.trainer.max_steps} "
                         "draws; held-out ones as evaluation reaches them)")
        return self.cache

    def _count(self, split: str) -> int:
        """How many examples of ``split`` the cache holds."""
        values = self.cache.get(split)
        return int((~torch.isnan(values).any(dim=1)).sum()) if values is not None and values.numel() else 0

    def _planned_batches(self) -> Iterable[Any]:
        """The first-epoch training batches that ``trainer.max_steps`` steps of ``trainer.grad_accum``
        micro-batches draw: the examples training will look up.

        ``all_batches("train")`` lists the first epoch's batches in training order, then its ragged
        tail; a run that goes past the first epoch draws that many or more, so it gets them all.
        """
        tcfg = self.ctx.cfg.trainer
        steps = int(tcfg.max_steps) * int(tcfg.get("grad_accum", 1))
        return itertools.islice(self.ctx.rollout.all_batches("train"), steps)

    def _missing(self, split: str, index: torch.Tensor) -> bool:
        """Whether the cache lacks any of examples ``index`` of ``split``."""
        values = self.cache.get(split)
        if values is None or values.numel() == 0:
            return index.numel() > 0
        return bool(torch.isnan(values[index]).any())

    def _fill(self, split: str, batches: Iterable[Any]) -> int:
        """Compute the batches whose examples the cache lacks; returns how many examples were added."""
        todo = [batch for batch in batches if self._missing(split, batch.index.cpu())]
        if not todo:
            return 0
        from tqdm.auto import tqdm

        n = self.ctx.rollout.num_examples(split)
        show = self.ctx.cfg.trainer.progress and self.ctx.accelerator.is_main_process
        model = self._initial_model()
        was_training = model.training
        model.eval()
        added = 0
        try:
            with torch.no_grad():
                for batch in tqdm(todo, desc=f"reference log-probs ({split})", disable=not show, leave=False):
                    batch = batch.to(self.ctx.device)
                    rows = _rows_per_example(batch)
                    sums = sequence_logprobs(model, batch, temperature=self.temperature).sum  # (R*B,)
                    per_example = sums.view(rows, -1).T.cpu()  # (B, R)
                    values = self.cache.get(split)
                    if values is None or values.numel() == 0:
                        values = self.cache[split] = torch.full((n, rows), float("nan"))
                    values[batch.index.cpu()] = per_example
                    added += int(batch.index.numel())
        finally:
            model.train(was_training)
        return added

    def _policy_is_initial(self) -> bool:
        """Whether the policy still holds the initial weights (no update since this was built, not resumed)."""
        if self._initial_versions is None:
            return False
        now = _weights_version(self.ctx.policy)
        return all(now.get(key) == version for key, version in self._initial_versions.items())

    def _initial_model(self) -> torch.nn.Module:
        """The initial policy: the policy itself before the first update; afterwards (or on resume) the
        LoRA base with adapters off, or the initial weights reloaded from the run's ``model`` config."""
        if self._policy_is_initial():
            return self.ctx.policy
        if self._loaded is None:
            from .lora import AdapterDisabled, is_lora
            from .models import load_model

            if is_lora(self.ctx.policy):
                self._loaded = AdapterDisabled(self.ctx.policy)
            else:
                self.ctx.log(f"reference log-probs: loading the initial weights of model={self.ctx.cfg.model.name} "
                             "for examples the cache lacks")
                model = load_model(self.ctx.cfg.model)[0]
                model.requires_grad_(False)
                self._loaded = model.to(self.ctx.device)
        return self._loaded

    def _save(self) -> None:
        from safetensors.torch import save_file

        if not self.ctx.accelerator.is_main_process:
            return
        path = self.path
        tmp = path.with_name(f".{CACHE_FILE}.tmp-{os.getpid()}")
        save_file({k: v.contiguous() for k, v in self.cache.items()}, str(tmp), metadata=self._metadata)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ lookup
    @torch.no_grad()
    def __call__(self, batch: TokenBatch, split: str = "train", *,
                 policy_sums: torch.Tensor | None = None) -> torch.Tensor:
        """(rows,) summed reference log-probs, rows in the batch's order.

        Args:
            batch: a batch of ``split`` (its ``index`` names its examples).
            split: ``train`` or ``eval``.
            policy_sums: optional (rows,) the policy's summed log-probs of this very batch at this
                reference's temperature. Held-out batches are cached when evaluation first reaches
                them; at the evaluation before training (policy in eval mode, no update yet) the
                policy *is* the reference, so these values are stored instead of computed twice.
        """
        if self.mode == "model":
            return sequence_logprobs(self.ctx.reference(), batch, temperature=self.temperature).sum
        index = batch.index.cpu()
        if self._missing(split, index):
            if policy_sums is not None and not self.ctx.policy.training and self._policy_is_initial():
                self._store(split, index, policy_sums.detach().float().view(-1, index.numel()).T.cpu())  # (B, R)
            else:  # computed now by the initial weights, in its first-epoch batches
                wanted = set(index.tolist())
                self._fill(split, (b for b in self.ctx.rollout.all_batches(split) if wanted & set(b.index.tolist())))
            self._save()
        values = self.cache[split][index]  # (B, R)
        return values.T.reshape(-1).to(batch.input_ids.device)  # (R*B,) component-major, like the batch

    def _store(self, split: str, index: torch.Tensor, per_example: torch.Tensor) -> None:
        """Put (B, R) values of examples ``index`` into the cache, where it has none yet."""
        values = self.cache.get(split)
        if values is None or values.numel() == 0:
            values = self.cache[split] = torch.full((self.ctx.rollout.num_examples(split), per_example.shape[1]),
                                                    float("nan"))
        missing = torch.isnan(values[index]).any(dim=1)  # (B,)
        values[index[missing]] = per_example[missing]
