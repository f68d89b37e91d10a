"""CAI's two data stages: critique -> revision (SL) and AI-labelled answer pairs (RL).

Both write one JSONL row per prompt through :class:`.store.ResumableJsonl` (resumable, finished
atomically) and are deterministic: prompts are processed in fixed batches of ``batch_size``, each
generate call samples under its own seed derived from (seed, batch start, step), and principles are
drawn per prompt (:mod:`.prompts`). Same settings + same seed -> the same file, resumed or not.

SL row::

    {"index", "source", "prompt": [messages], "initial": y_0, "principles": [k_1..k_N],
     "rounds": [{"round": r, "principle_index": k_r, "principle": name, "critique": c_r, "revision": y_r}],
     "stopped": null | "empty revision" | "unchanged", "completion": final answer}

RL row::

    {"index", "source", "prompt", "responses": [y_1, y_2], "principles": [...],
     "judgements": [{"principle_index", "principle", "p_a_first_as_a", "p_a_first_as_b", "p_first", ...}],
     "p_first": P(y_1 better), "chosen", "rejected", "label": P(chosen better) >= 0.5}

(``skipped`` instead of ``chosen`` / ``rejected`` / ``label`` when the two samples are equal or empty.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from alignkit.api import ConfigError, DataError, split_records

from .constitution import Constitution
from .feedback import FeedbackModel
from .generation import ChatGenerator
from .prompts import (
    ANSWER_PREFIX,
    FEEDBACK_TEMPLATE,
    critique_messages,
    revision_messages,
    sample_rl_principles,
    sample_sl_principles,
)
from .store import ResumableJsonl

STAGES = ("sl", "rl")


@dataclass
class CAIDataConfig:
    """``rollout=cai`` options (also read by ``alignkit cai generate``).

    Attributes:
        name: ``cai``.
        stage: ``sl`` (critique -> revision, train on final revisions) or ``rl`` (two samples per
            prompt labelled by the feedback model, train on the preference pairs).
        constitution: a constitution YAML file, or ``default`` (alignkit's own).
        num_prompts: how many training prompts of the ``data`` config to use (null: all).
        single_turn_only: keep only prompts that are a single user message.
        rounds: N, the most critique -> revision rounds per prompt.
        stop_when_unchanged: end a prompt's rounds early when a revision is empty or repeats the answer.
        max_new_tokens: cap on every generated text.
        temperature: sampling temperature (0 = greedy; the RL stage needs > 0 for two distinct samples).
        top_p: nucleus sampling (1 = off).
        max_prompt_tokens: generation prompts are cut to their last ``max_prompt_tokens`` tokens.
        batch_size: prompts per generate call (fixed: part of what makes the output reproducible).
        principles_per_pair: K, preference principles sampled per pair (labels averaged).
        swap: also ask with the answers swapped and average (cancels the judge's position bias).
        feedback_model: a local HF folder for the feedback model; null uses the run's initial model.
        feedback_template: the feedback question; ``{conversation}``, ``{principle}``,
            ``{response_a}``, ``{response_b}`` are filled in.
        answer_prefix: text after the generation prompt, right before the answer letter.
        seed: seed of principle sampling and generation (null: ``trainer.seed``).
        output: the generated JSONL (null: ``<run folder>/cai_<stage>.jsonl``).
        eval_fraction: share of the generated examples held out for evaluation.
        shuffle: reshuffle the generated training examples every epoch.
    """

    name: str = "cai"
    stage: str = "sl"
    constitution: str = "default"
    num_prompts: Optional[int] = 32
    single_turn_only: bool = False
    rounds: int = 1
    stop_when_unchanged: bool = True
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 1.0
    max_prompt_tokens: int = 768
    batch_size: int = 8
    principles_per_pair: int = 2
    swap: bool = True
    feedback_model: Optional[str] = None
    feedback_template: str = FEEDBACK_TEMPLATE
    answer_prefix: str = ANSWER_PREFIX
    seed: Optional[int] = None
    output: Optional[str] = None
    eval_fraction: float = 0.1
    shuffle: bool = True


def check_config(cfg: Any) -> None:
    if cfg.stage not in STAGES:
        raise ConfigError(f"rollout.stage={cfg.stage}: expected one of {STAGES}")
    if cfg.rounds < 1 or cfg.batch_size < 1 or cfg.max_new_tokens < 1 or cfg.principles_per_pair < 1:
        raise ConfigError("rollout.rounds, rollout.batch_size, rollout.max_new_tokens and "
                          "rollout.principles_per_pair must be >= 1")
    if cfg.temperature < 0:
        raise ConfigError(f"rollout.temperature={cfg.temperature}: must be >= 0")
    if cfg.stage == "rl" and cfg.temperature == 0:
        raise ConfigError("rollout.stage=rl samples two answers per prompt: rollout.temperature must be > 0")


def call_seed(seed: int, start: int, step: int) -> int:
    """The seed of one generate call: batch starting at prompt ``start``, step 0 (answer), 2r−1, 2r."""
    return ((seed * 1_000_003 + start) * 101 + step) % (2**63)


def load_prompts(data_cfg: Any, registry: Any, seed: int, *, split: str = "train", limit: int | None = None,
                 single_turn_only: bool = False) -> list[dict]:
    """Prompt records ``{"prompt": messages, "source": file:line}`` of the ``data`` config's split."""
    train, held_out = split_records(data_cfg, registry, "prompts", seed)
    records = train if split == "train" else held_out
    out = []
    for r in records:
        if single_turn_only and not (len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user"):
            continue
        out.append({"prompt": r["prompt"], "source": r.get("_where", "")})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"data: no {split} prompts" + (" with a single user turn" if single_turn_only else ""))
    return out


def _final(initial: str, rounds: list[dict]) -> str:
    for entry in reversed(rounds):
        if entry["revision"].strip():
            return entry["revision"]
    return initial


def generate_sl(generator: ChatGenerator, constitution: Constitution, prompts: list[dict], cfg: Any, seed: int,
                store: ResumableJsonl, progress: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Answer, then up to ``cfg.rounds`` critique -> revision rounds per prompt; rows in prompt order."""
    rows = store.resume(cfg.batch_size, len(prompts))
    progress(len(rows))
    for start in range(len(rows), len(prompts), cfg.batch_size):
        batch = prompts[start:start + cfg.batch_size]
        out = []
        for offset, p in enumerate(batch):
            index = start + offset
            out.append({"index": index, "source": p["source"], "prompt": p["prompt"],
                        "principles": sample_sl_principles(constitution, seed, index, cfg.rounds),
                        "rounds": [], "stopped": None})
        initial = generator([p["prompt"] for p in batch], call_seed(seed, start, 0))
        current = list(initial)
        for row, text in zip(out, initial):
            row["initial"] = text
        for r in range(cfg.rounds):
            active = [i for i, row in enumerate(out) if row["stopped"] is None]
            if not active:
                break
            principles = [constitution.principles[out[i]["principles"][r]] for i in active]
            critiques = generator([critique_messages(out[i]["prompt"], current[i], pr)
                                   for i, pr in zip(active, principles)], call_seed(seed, start, 2 * r + 1))
            revisions = generator([revision_messages(out[i]["prompt"], current[i], pr, c)
                                   for i, pr, c in zip(active, principles, critiques)], call_seed(seed, start, 2 * r + 2))
            for i, pr, critique, revision in zip(active, principles, critiques, revisions):
                out[i]["rounds"].append({"round": r + 1, "principle_index": out[i]["principles"][r],
                                         "principle": pr.name, "critique": critique, "revision": revision})
                if cfg.stop_when_unchanged and not revision.strip():
                    out[i]["stopped"] = "empty revision"
                elif cfg.stop_when_unchanged and revision.strip() == current[i].strip():
                    out[i]["stopped"] = "unchanged"
                if revision.strip():
                    current[i] = revision
        for row in out:
            row["completion"] = _final(row["initial"], row["rounds"])
            row["constitution"] = constitution.name
        store.append(out)
        rows.extend(out)
        progress(len(out))
    store.finish()
    return rows


def generate_rl(generator: ChatGenerator, feedback: FeedbackModel, constitution: Constitution, prompts: list[dict],
                cfg: Any, seed: int, store: ResumableJsonl, progress: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Two samples per prompt, soft-labelled by the feedback model under K sampled principles."""
    rows = store.resume(cfg.batch_size, len(prompts))
    progress(len(rows))
    for start in range(len(rows), len(prompts), cfg.batch_size):
        batch = prompts[start:start + cfg.batch_size]
        samples = generator([p["prompt"] for p in batch for _ in range(2)], call_seed(seed, start, 0))
        first, second = samples[0::2], samples[1::2]
        principles = [sample_rl_principles(constitution, seed, start + i, cfg.principles_per_pair)
                      for i in range(len(batch))]
        keep = [i for i in range(len(batch)) if first[i].strip() and second[i].strip() and first[i] != second[i]]
        labels = feedback.label(constitution, [batch[i]["prompt"] for i in keep], [first[i] for i in keep],
                                [second[i] for i in keep], [principles[i] for i in keep], swap=cfg.swap)
        labelled = dict(zip(keep, labels))
        out = []
        for i, p in enumerate(batch):
            row = {"index": start + i, "source": p["source"], "prompt": p["prompt"], "responses": [first[i], second[i]],
                   "principles": principles[i], "constitution": constitution.name}
            if i in labelled:
                judged = labelled[i]
                p_first = judged["p_first"]
                row.update(judgements=judged["judgements"], p_first=p_first)
                better_first = p_first >= 0.5
                row.update(chosen=first[i] if better_first else second[i], rejected=second[i] if better_first else first[i],
                           label=p_first if better_first else 1.0 - p_first)
            else:
                row["skipped"] = "identical samples" if first[i] == second[i] else "empty sample"
            out.append(row)
        store.append(out)
        rows.extend(out)
        progress(len(out))
    store.finish()
    return rows


def training_rows(rows: list[dict], stage: str) -> list[dict]:
    """What training reads: ``prompt_completion`` rows (SL) or ``pairwise`` rows with soft labels (RL)."""
    if stage == "sl":
        return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows if r["completion"].strip()]
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "label": r["label"]}
            for r in rows if "chosen" in r]


def settings_of(cfg: Any, stage: str, constitution: Constitution, seed: int, model_id: str, feedback_id: str,
                data_cfg: Any, prompts: list[dict], tokenizer_id: str) -> dict:
    """Everything that decides a generated file's rows (its resume fingerprint): the stage's options, the
    constitution, the seed, the models (weights included), the prompts themselves (not only their file's
    name) and the tokenizer with its chat template."""
    keys = ["rounds", "stop_when_unchanged", "max_new_tokens", "temperature", "top_p", "max_prompt_tokens",
            "batch_size", "single_turn_only"]
    if stage == "rl":
        keys += ["principles_per_pair", "swap", "feedback_template", "answer_prefix"]
    out = {k: cfg[k] for k in keys}
    prompts_digest = hashlib.sha256(json.dumps(prompts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out.update(stage=stage, constitution=constitution.fingerprint(), seed=seed, model=model_id,
               data=str(data_cfg.path), data_format=str(data_cfg.format), prompts=len(prompts),
               prompts_digest=prompts_digest, tokenizer=tokenizer_id[:16])
    if stage == "rl":
        out["feedback_model"] = feedback_id
        out.pop("rounds"), out.pop("stop_when_unchanged")
    return out
