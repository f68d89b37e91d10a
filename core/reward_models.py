"""Reward models as artefacts: a scalar (or multi-attribute) head on a causal LM's trunk, saved beside the
model, reloaded to score texts (``scorer=reward_model``, ``eval rm``, ``eval winrate --judge reward_model:...``,
``alignkit steerlm annotate``).

The score of a sequence is ``head(h_last)`` where ``h_last`` (d,) is the final hidden state at the
last non-padding token: the whole prompt and answer have been read there. No vocabulary logits are
computed. Saved beside the model as ``reward_head.safetensors`` + ``reward_model.json``, so a run's
``final/`` folder reloads as a scorer. Texts are encoded exactly as the reward model was trained on
them: the encoding settings saved in its folder (:class:`alignkit.encoding.EncodingSettings`) are
reused; an explicit option that differs is used and reported in one line. A folder without saved
settings (an older run) uses the chat template when the tokenizer has one, no system prompt and
``max_length`` 1024.
"""


from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .batches import RolloutBatch
from .encoding import EncodingSettings, report
from .errors import ConfigError, ModelError
from .logprobs import hidden_states
from .models import ModelConfig, find_model_folder, load_model
from .records import Messages
from .tokenize import pad

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


class RewardHead(torch.nn.Module):
    """Linear map from the last hidden state to A attribute scores.

    Args:
        hidden_size: d of the language model.
        attributes: names of the A outputs (one, ``reward``, for a preference RM).
    """

    def __init__(self, hidden_size: int, attributes: list[str]) -> None:
        super().__init__()
        self.attributes = list(attributes)
        self.linear = torch.nn.Linear(hidden_size, len(self.attributes))
        # Small initial scores: the untrained RM starts near a tie on every pair.
        torch.nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(last_hidden.to(self.linear.weight.dtype)).float()  # (N, A)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / HEAD_FILE))
        (folder / META_FILE).write_text(json.dumps({"format": "alignkit-reward-model", "version": 1,
                                                     "attributes": self.attributes}, indent=1))

    @classmethod
    def load(cls, folder: Path, hidden_size: int) -> "RewardHead":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META_FILE).exists():
            raise ModelError(f"{folder}: no {META_FILE}; not a reward model saved by method=reward_model")
        meta = json.loads((folder / META_FILE).read_text())
        head = cls(hidden_size, meta["attributes"])
        head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return head


def at_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, d) rows of ``hidden`` (N, T, d) at each sequence's last real token (right padding)."""
    last = attention_mask.long().sum(dim=1).clamp_min(1) - 1  # (N,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (N, d)


def last_token_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, d) final hidden state at each row's last real token (right padding)."""
    return at_last_token(hidden_states(model, input_ids, attention_mask), attention_mask)


def score_sequences(model: Any, head: RewardHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, A) reward scores of N right-padded sequences."""
    return head(last_token_hidden(model, input_ids, attention_mask))


DEFAULT_MAX_LENGTH = 1024


def resolve_reward_folder(path: str | None, key: str = "scorer.path") -> Path:
    """The folder of a reward model saved by ``method=reward_model`` that ``path`` names.

    Args:
        path: what the user gave: a run folder (its ``final/``, or its newest checkpoint), a checkpoint,
            its ``model/`` or a saved folder.
        key: how the user gave it, named in the error: a config key (``scorer.path``) or a flag
            (``--model``, ``--judge reward_model:``).
    """
    if not path:
        raise ConfigError(f"{key} is not set; pass {_named(key, '<reward-model run folder>')}")
    try:
        folder: Path | None = find_model_folder(path, key)
    except ModelError:
        folder = None
    if folder is not None and (folder / META_FILE).exists():
        return folder
    if not Path(path).expanduser().exists():
        raise ModelError(f"{_named(key, path)}: no such file or folder")
    raise ModelError(f"{_named(key, path)}: not a reward model (no {META_FILE} in it, in its final/ or in a "
                     "checkpoint's model/); train one with method=reward_model")


def _named(key: str, value: str) -> str:
    """An argument as the user typed it: ``--model runs/x``, ``--judge reward_model:runs/x`` or ``scorer.path=runs/x``."""
    if key.endswith(":"):
        return f"{key}{value}"
    return f"{key} {value}" if key.startswith("-") else f"{key}={value}"


class RewardModelScorer:
    """Loads ``<run>/final`` (LM trunk + reward head) and scores (prompt, completion) pairs."""

    def __init__(self, folder: Path, *, device: torch.device, attribute: str | None = None, batch_size: int = 8,
                 max_length: int | None = None, all_attributes: bool = False, system_prompt: str | None = None,
                 chat_template: bool | None = None, source: str = "scorer", log: Callable[[str], None] = report) -> None:
        from omegaconf import OmegaConf

        # load_model: a full trunk, or a LoRA checkpoint's base with its adapter merged in.
        model, self.tokenizer = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"path": str(folder)}))
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.head = RewardHead.load(folder, self.model.config.hidden_size).to(device).eval()
        self.column = 0 if attribute is None else self._column(attribute)
        self.all_attributes = all_attributes
        self.encoding = self._encoding(folder, max_length=max_length, system_prompt=system_prompt,
                                       chat_template=chat_template, source=source, log=log)
        self.encoder = self.encoding.encoder(self.tokenizer)
        self.batch_size, self.device = batch_size, device
        self._bar: Any = None  # a progress bar over the batches being scored (see :meth:`progress`)

    def _encoding(self, folder: Path, *, max_length: int | None, system_prompt: str | None,
                  chat_template: bool | None, source: str, log: Callable[[str], None]) -> EncodingSettings:
        """The settings the reward model was trained with, explicit options applied (and reported)."""
        overrides = {"max_length": max_length, "system_prompt": system_prompt, "chat_template": chat_template}
        saved = EncodingSettings.from_folder(folder)
        if saved is None:
            cap = max_length or DEFAULT_MAX_LENGTH
            defaults = EncodingSettings.defaults(self.tokenizer, max_length=cap, max_prompt_length=cap * 3 // 4)
            return defaults.with_overrides(overrides, source=source, where=str(folder), log=lambda line: None)
        return saved.with_overrides(overrides, source=source, where=str(folder), log=log)

    def _column(self, attribute: str) -> int:
        if attribute not in self.head.attributes:
            raise ConfigError(f"scorer.attribute={attribute!r}; this reward model has {self.head.attributes}")
        return self.head.attributes.index(attribute)

    @contextlib.contextmanager
    def progress(self, *texts: int, desc: str = "reward model") -> Iterator[None]:
        """Show a progress bar (total, rate, ETA) over the batches of the coming calls, ``texts[i]`` texts each.

        For the long scorings of a command (``alignkit eval rm``); scoring inside training shows none.
        """
        from tqdm.auto import tqdm

        total = sum(math.ceil(n / self.batch_size) for n in texts)
        with tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    @property
    def attributes(self) -> list[str]:
        """Names of the head's outputs (the columns of :meth:`score_attributes`)."""
        return list(self.head.attributes)

    def score_texts(self, prompts: list[list[dict]], completions: list[str | Messages]) -> torch.Tensor:
        """(B,) rewards for chat-message prompts and their completions (texts or message lists)."""
        return self.score_attributes(prompts, completions)[:, self.column]  # (B,)

    @torch.no_grad()
    def score_attributes(self, prompts: list[list[dict]], completions: list[str | Messages]) -> torch.Tensor:
        """(B, A) scores of every head output for chat-message prompts and their completions.

        A completion is a text (one assistant message) or a list of messages (a record's completion as
        its data format parsed it: encoded exactly like the training run encoded it).
        """
        rows = [self.encoder.encode(p, [{"role": "assistant", "content": c}] if isinstance(c, str) else list(c))["input_ids"]
                for p, c in zip(prompts, completions)]
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            ids = torch.tensor(pad(chunk, self.tokenizer.pad_token_id), device=self.device)  # (b, T)
            mask = torch.tensor(pad([[1] * len(r) for r in chunk], 0), device=self.device)  # (b, T)
            out.append(score_sequences(self.model, self.head, ids, mask))  # (b, A)
            if self._bar is not None:
                self._bar.update(1)
        return torch.cat(out).float().cpu()  # (B, A)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        if self.all_attributes:
            return self.score_attributes(batch.prompts, batch.completions)  # (B, A)
        return self.score_texts(batch.prompts, batch.completions)  # (B,)
