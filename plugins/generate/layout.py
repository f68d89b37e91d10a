"""Turning ``generate`` output into training rows: where each completion ends, and the batch layout.

An online batch (what ``rollout=generate`` yields and ``ppo`` / ``reinforce`` consume) holds N = P·k
rows, P prompts with k samples each, sample-major within a prompt (rows ``p·k … p·k + k − 1`` share
prompt ``p``):

============================  ============================================================
key                           meaning
============================  ============================================================
``input_ids``                 (N, T) prompt + completion, right-padded (positions 0.. like at sampling)
``attention_mask``            (N, T) 1 on prompt and completion tokens
``labels``                    (N, T) completion tokens, ``-100`` on prompt and padding
``group``                     (N,) prompt index 0..P−1 within the batch
``ended``                     (N,) 1 if the completion stopped (EOS or stop string) before the cap
``prompts``                   N chat-message lists (each prompt repeated k times)
``prompt_text``               N strings: the last user message of each prompt (what scorers read)
``completions``               N decoded completions (special tokens removed)
``num_prompts``, ``k``        P and k
============================  ============================================================

The completion of a row runs up to and including the first EOS, or the token that completes the
first stop string; tokens after it were never sampled (``generate`` pads finished rows) and are
dropped. Log-probs of the completion are then read at positions ``labels[:, 1:] != -100``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from alignkit.tokenize import IGNORE_INDEX, pad


def completion_end(tokens: Sequence[int], eos_ids: set[int], stop: Sequence[str], tokenizer: Any) -> tuple[int, bool]:
    """Number of sampled tokens that belong to the completion, and whether it ended on its own.

    Args:
        tokens: the generated token ids of one row (after the prompt), padding included.
        eos_ids: end-of-sequence ids (the EOS is part of the completion: the policy learns to stop).
        stop: stop strings; the completion ends with the token that completes the first one.
        tokenizer: decodes tokens to find stop strings.

    Returns:
        (length, ended): ``tokens[:length]`` is the completion; ``ended`` is False when it hit the cap.
    """
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), None)
    if stop:
        head = list(tokens[: end if end is not None else len(tokens)])
        text = tokenizer.decode(head, skip_special_tokens=True)
        if any(s in text for s in stop):
            # The shortest prefix whose text holds a stop string: the token that completed it ends the row.
            for n in range(1, len(head) + 1):
                if any(s in tokenizer.decode(head[:n], skip_special_tokens=True) for s in stop):
                    return n, True
    if end is not None:
        return end, True
    return len(tokens), False


def last_user_text(messages: list[dict[str, str]]) -> str:
    """The content of the last user message (the question a scorer judges), or of the last message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"] if messages else ""


def build_rows(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` of prompt + completion rows."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    labels = [[IGNORE_INDEX] * len(p) + c for p, c in zip(prompt_ids, completion_ids)]
    return {"input_ids": torch.tensor(pad(seqs, pad_id)),  # (N, T)
            "attention_mask": torch.tensor(pad([[1] * len(s) for s in seqs], 0)),  # (N, T)
            "labels": torch.tensor(pad(labels, IGNORE_INDEX))}  # (N, T)


def response_mask(batch: dict) -> torch.Tensor:
    """(N, T−1) bool: positions whose next token is a completion token (aligned with log-probs)."""
    return batch["labels"][:, 1:] != IGNORE_INDEX  # (N, T-1)


ROW_KEYS = ("input_ids", "attention_mask", "labels", "group", "ended")


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of ``rows`` (every per-row tensor and list), trailing all-padding columns dropped.

    Per-row tensors are those whose first dimension is N; lists of N items are indexed too. Scalars
    (``num_prompts``, ``k``) are kept. The same ``rows`` always give the same tensors, so values
    precomputed on a sub-batch are reproduced exactly by the update that uses it.
    """
    n = batch["input_ids"].shape[0]
    index = rows.tolist()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in index]
        else:
            out[key] = value
    width = int(out["attention_mask"].sum(dim=1).max())
    for key, value in list(out.items()):
        # Sequence tensors are (rows, T); per-token values precomputed on them are (rows, T-1).
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == batch["input_ids"].shape[1]:
            out[key] = value[:, :width]
        elif isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == batch["input_ids"].shape[1] - 1:
            out[key] = value[:, : width - 1]
    return out
