"""A scalar (or multi-attribute) reward head on a causal LM's trunk, scored at the last real token.

The score of a sequence is ``head(h_last)`` where ``h_last`` (d,) is the final hidden state at the
last non-padding token: the whole prompt and answer have been read there. No vocabulary logits are
computed. Saved beside the model as ``reward_head.safetensors`` + ``reward_model.json``, so a run's
``final/`` folder reloads as a scorer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import ModelError
from alignkit.logprobs import hidden_states

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


def score(model: Any, head: RewardHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, A) reward scores of N right-padded sequences."""
    return head(last_token_hidden(model, input_ids, attention_mask))
